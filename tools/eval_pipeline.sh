#!/usr/bin/env bash
# Whole-pipeline evaluation (issue: MedLSAM pipeline), run by hand from the repository root:
#   OpenKBP: 5 supports, the next N cases as queries, 7 organs; MedLAM boxes (SPL 6 mm and WPL)
#   vs oracle boxes (each slice's true box with the same 10 px margin), one `medlsam eval-segment`.
#   Abdomen: spleen (MSD case 8, ts_example) and liver (3D-IRCADb 17, ts_example), each case
#   as the query with the other case that labels the organ as the support (SPL, WPL, oracle).
# Usage: tools/eval_pipeline.sh [N_QUERIES=5] [OUT=out/eval_pipeline] [BACKEND=cpu]
#   FIRST=K skips the first K query cases (to evaluate in parts); ABDOMEN=0 skips the abdomen,
#   OPENKBP=0 the OpenKBP part.
#   EVAL_ARGS adds options to the OpenKBP eval-segment, e.g. the registration prior alone:
#   EVAL_ARGS="--localizer register --eval-modes reg" (its rows beside eval/openkbp's:
#   `medlsam eval-report eval/openkbp OUT/openkbp`).
#   ABDOMEN_ARGS does the same for the abdominal rows.
#   N=all takes every remaining case. OpenKBP results accumulate in OUT/openkbp (eval.csv,
#   times.csv): a stopped run resumes there, and the printed table covers every query in it.
#   The full run's results are kept in the repository: `ABDOMEN=0 tools/eval_pipeline.sh all eval`
#   continues eval/openkbp (see eval/README.md).
# Prints the per-organ tables (DSC per mode and box IoU) and timings; the metrics' rows (also
# HD95, WD, ALE) are in each folder's eval.csv.
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
if [ "${OPENKBP:-1}" != 0 ]; then
  echo "== OpenKBP: MedLAM SPL 6 mm and WPL boxes vs oracle boxes (true per-slice boxes + 10 px margin)"
  "$BIN" eval-segment "${args[@]}" --organs all --slab-mm 6 --backend "$BACKEND" --out "$OUT/openkbp" ${EVAL_ARGS:-}
fi
[ "${ABDOMEN:-1}" = 0 ] && exit 0
A="$D/abdomen"
# Each labelled abdominal case as the query, a case with that organ labelled as the support
# (eval-segment: MedLAM SPL 6 mm and WPL boxes vs oracle boxes). ts_example as the support
# localizes its spleen, kidneys and liver together (the organ layout needs several organs);
# ircadb_017 and msd_spleen_008 label one organ each.
ev() { # NAME SUPPORT ORGANS QUERY [extra args]
  local name=$1 sup=$2 organs=$3 qry=$4; shift 4
  echo "== Abdomen: $name (support $sup, organs $organs → query $qry)"
  "$BIN" eval-segment --support-image "$A/$sup.ct.nii.gz" --support-label "$A/$sup.label.nii.gz" \
    --query "$A/$qry.ct.nii.gz" --query-label "$A/$qry.label.nii.gz" --organs "$organs" \
    --slab-mm 6 --backend "$BACKEND" --out "$OUT/abdomen_$name" "$@" ${ABDOMEN_ARGS:-} 2>/dev/null
}
ev spleen ts_example 1,2,3,5 msd_spleen_008
ev spleen_alone ts_example 1 msd_spleen_008
# ircadb_017's liver is label 1 with its tumours 6 and 7 inside; ts_example's liver is 5.
ev liver ts_example 1,2,3,5 ircadb_017 --query-label-map 5=1,5=6,5=7
ev liver_alone ts_example 5 ircadb_017 --query-label-map 5=1,5=6,5=7
ev spleen_reverse msd_spleen_008 1 ts_example
ev liver_reverse ircadb_017 1 ts_example --query-label-map 1=5
