# Device-side setup for tools/device/README.md, sourced from the repository root there: the Vulkan
# loader, the CLI and the training data under /tmp/t (kept while the machine stays warm).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; fi
mkdir -p /tmp/t/data
[ -x /tmp/t/medlsam ] || { xz -dc .dev/bin/medlsam.xz > /tmp/t/medlsam && chmod +x /tmp/t/medlsam; }
for d in .dev/d1 .dev/d2; do
  [ -d $d ] || continue
  cp $d/*.nii.gz /tmp/t/data/ 2>/dev/null
  for f in $d/*.xz; do [ -f "$f" ] && xz -dc $f > /tmp/t/data/$(basename $f .xz); done
done
echo "data: $(ls /tmp/t/data | wc -l) files, $(du -sh /tmp/t/data | cut -f1)"
