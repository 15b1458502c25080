# Runs detached on the device: a short run to measure the rate, then the rest with a
# schedule sized to T seconds of training in all.
cd /tmp/t
set -f
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=16; LR=5e-4; N=$(ls data | wc -l); SPE=$(( (N + B - 1) / B )); T=${T:-1300}
start=$(date +%s)
common="--images data/* --out /tmp/t/medlam.bpk --checkpoint-dir /tmp/t/ckpt --cache-dir /tmp/t/cache --backend wgpu --batch $B --lr $LR --seed 1 --init /tmp/t/init.bpk --log-every 10"
echo "N=$N SPE=$SPE T=$T"
./medlsam train $common --epochs 400 --max-steps 40 --checkpoint-every 40
rate=$(grep -o '[0-9.]* it/s' /tmp/t/train.log | tail -1 | cut -d' ' -f1)
left=$(( T - ($(date +%s) - start) ))
epochs=$(python3 -c "import math; print(max(4, math.ceil((40 + $rate * $left) / $SPE)))")
echo "rate $rate it/s, $left s left -> epochs $epochs ($(( epochs * SPE )) steps)"
./medlsam train $common --resume --epochs $epochs --checkpoint-every 50
echo "TRAINING DONE rc=$?"
