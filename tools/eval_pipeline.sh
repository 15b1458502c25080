#!/usr/bin/env bash
# Whole-pipeline evaluation (issue: MedLSAM pipeline), run by hand from the repository root:
#   OpenKBP: 5 supports, the next N cases as queries, 7 organs; MedLAM boxes (SPL 6 mm and WPL)
#   vs oracle boxes (each slice's true box with the same 10 px margin), one `medlsam eval-segment`.
#   Abdomen: spleen of MSD case 8 and liver of 3D-IRCADb 17 with TotalSegmentator's ts_example
#   as the support (MedLAM SPL and oracle boxes).
# Usage: tools/eval_pipeline.sh [N_QUERIES=5] [OUT=out/eval_pipeline] [BACKEND=cpu]
#   FIRST=K skips the first K query cases (to evaluate in parts); ABDOMEN=0 skips the abdomen.
#   N=all takes every remaining case. OpenKBP results accumulate in OUT/openkbp (eval.csv,
#   times.csv): a stopped run resumes there, and the printed table covers every query in it.
#   The full run's results are kept in the repository: `ABDOMEN=0 tools/eval_pipeline.sh all eval`
#   continues eval/openkbp (see eval/README.md).
# Prints the per-organ tables (OpenKBP: DSC per mode and box IoU; abdomen: DSC, HD95, box IoU,
# WD, ALE as mean ± sd) and timings.
set -euo pipefail
N="${1:-5}"
OUT="${2:-out/eval_pipeline}"
BACKEND="${3:-cpu}"
D="${MEDLSAM_DATA:-../shared/data}"
cargo build --release --quiet --bin medlsam
BIN=target/release/medlsam
mapfile -t CASES < <(tail -n +2 "$D/openkbp/index.tsv" | cut -f1)
SUP=("${CASES[@]:0:5}")
[ "$N" = all ] && N=${#CASES[@]}
QRY=("${CASES[@]:$((5 + ${FIRST:-0})):$N}")
args=()
for c in "${SUP[@]}"; do
  args+=(--support-image "$D/openkbp/$c.ct.nii.gz" --support-label "$D/openkbp/$c.label.nii.gz")
done
for c in "${QRY[@]}"; do
  args+=(--query "$D/openkbp/$c.ct.nii.gz" --query-label "$D/openkbp/$c.label.nii.gz")
done
echo "supports: ${SUP[*]}"
echo "queries:  ${QRY[*]}"
echo "== OpenKBP: MedLAM SPL 6 mm and WPL boxes vs oracle boxes (true per-slice boxes + 10 px margin)"
"$BIN" eval-segment "${args[@]}" --organs all --slab-mm 6 --backend "$BACKEND" --out "$OUT/openkbp"
[ "${ABDOMEN:-1}" = 0 ] && exit 0
A="$D/abdomen"
echo "== Abdomen: spleen (support ts_example → query msd_spleen_008), MedLAM SPL"
"$BIN" segment --support-image "$A/ts_example.ct.nii.gz" --support-label "$A/ts_example.label.nii.gz" \
  --query "$A/msd_spleen_008.ct.nii.gz" --query-label "$A/msd_spleen_008.label.nii.gz" \
  --organs 1 --backend "$BACKEND" --out "$OUT/spleen_spl" 2>/dev/null
echo "== Abdomen: liver (support ts_example, label 5 → query ircadb_017, labels 1 + tumours 6, 7), MedLAM SPL"
"$BIN" segment --support-image "$A/ts_example.ct.nii.gz" --support-label "$A/ts_example.label.nii.gz" \
  --query "$A/ircadb_017.ct.nii.gz" --query-label "$A/ircadb_017.label.nii.gz" --query-label-map 5=1,5=6,5=7 \
  --organs 5 --backend "$BACKEND" --out "$OUT/liver_spl" 2>/dev/null
echo "== Abdomen, oracle boxes: spleen of msd_spleen_008, liver of ircadb_017"
"$BIN" segment --query "$A/msd_spleen_008.ct.nii.gz" --boxes-from-label "$A/msd_spleen_008.label.nii.gz" \
  --organs 1 --backend "$BACKEND" --out "$OUT/spleen_oracle" 2>/dev/null | tail -n +2
"$BIN" segment --query "$A/ircadb_017.ct.nii.gz" --boxes-from-label "$A/ircadb_017.label.nii.gz" \
  --organs 1 --backend "$BACKEND" --out "$OUT/liver_oracle" 2>/dev/null | tail -n +2
