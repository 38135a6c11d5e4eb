#!/usr/bin/env bash
# One row of the ACDC methods x budgets table: fit (wall time and peak memory from GNU time), then
# predict + evaluate on val.list (by pathology), then predict the other training patients (kept out
# of every labelled budget and pool) and score them per volume, for diagnosis only.
# Usage (from a folder holding data/acdc and the lists):
#   benchmarks/acdc_budget_row.sh NAME OTHER_LIST fit-arguments...
#   e.g. benchmarks/acdc_budget_row.sh fs1 acdc_other_patients.list fit fewshot --labeled-cases 1 --seed 0
# Writes NAME/ (the run), NAME.time, NAME.log, NAME.pv/, NAME.eval.json, NAME.eval.txt, NAME.po/,
# NAME.other.txt; a row whose NAME.other.txt exists is skipped (rerun after deleting it).
# env: FEWSAM (the command, default fewsam), DATA (default data/acdc).
set -euo pipefail
NAME=${1:?usage: benchmarks/acdc_budget_row.sh NAME OTHER_LIST fit-arguments...}
OTHER=${2:?usage: benchmarks/acdc_budget_row.sh NAME OTHER_LIST fit-arguments...}
shift 2
FEWSAM=${FEWSAM:-fewsam}
DATA=${DATA:-data/acdc}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$NAME.other.txt" ] && exit 0
echo "$(date -u +%T) start $NAME: $FEWSAM $*"
/usr/bin/time -v -o "$NAME.time" $FEWSAM "$@" --data "$DATA" --quiet --out "$NAME" > "$NAME.log" 2>&1
$FEWSAM predict "$NAME" --data "$DATA" --split val.list --out "$NAME.pv" --quiet --overwrite
$FEWSAM evaluate --pred "$NAME.pv" --data "$DATA" --split val.list --group-by group --json "$NAME.eval.json" \
  --overwrite > "$NAME.eval.txt"
$FEWSAM predict "$NAME" --data "$DATA" --split "$OTHER" --out "$NAME.po" --quiet --overwrite
python "$HERE/volume_dice.py" "$NAME.po" "$DATA" "$OTHER" > "$NAME.other.txt"
echo "$(date -u +%T) done $NAME: $(grep -E 'Elapsed|Maximum resident' "$NAME.time" | sed 's/^\s*//' | tr '\n' ' ')"
