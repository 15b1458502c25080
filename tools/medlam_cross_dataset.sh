#!/usr/bin/env bash
# Cross-dataset check of MedLAM localization (one support: TotalSegmentator's ts_example):
# spleen → MSD spleen case 8, liver → 3D-IRCADb 17 (whose liver is label 1, not 5).
# Spleen, kidneys and liver are localized together (the organ layout prior needs two or more
# organs); each query's label map has only its one organ, so only that one is scored.
# Usage: tools/medlam_cross_dataset.sh [WEIGHTS] [OUT]   (run from the repository root)
set -euo pipefail
W="${1:-weights/medlam.bpk}"
OUT="${2:-out/cross_dataset}"
D="${MEDLSAM_DATA:-../shared/data}/abdomen"
BIN=(cargo run --release --quiet --bin medlsam --)
for mode in wpl spl; do
  "${BIN[@]}" localize --weights "$W" --mode "$mode" \
    --support-image "$D/ts_example.ct.nii.gz" --support-label "$D/ts_example.label.nii.gz" \
    --query "$D/msd_spleen_008.ct.nii.gz" --query-label "$D/msd_spleen_008.label.nii.gz" \
    --organs 1,2,3,5 --out "$OUT/spleen_$mode"
  "${BIN[@]}" localize --weights "$W" --mode "$mode" \
    --support-image "$D/ts_example.ct.nii.gz" --support-label "$D/ts_example.label.nii.gz" \
    --query "$D/ircadb_017.ct.nii.gz" --query-label "$D/ircadb_017.label.nii.gz" \
    --query-label-map 5=1 --organs 1,2,3,5 --out "$OUT/liver_$mode"
  echo "== $mode"; tail -n +2 "$OUT/spleen_$mode/localization.csv" "$OUT/liver_$mode/localization.csv"
done
