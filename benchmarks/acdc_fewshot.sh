#!/usr/bin/env bash
# ACDC few-shot table: few-shot SAM (3 labelled cases; 1, 3, 10 labelled slices) beside zero-shot
# SAM with oracle point and box prompts, on the 20 validation volumes (10 patients, ED + ES).
# Usage: benchmarks/acdc_fewshot.sh DATA_DIR [OUT], e.g. benchmarks/acdc_fewshot.sh data/acdc runs/acdc_fewshot
# env: DEVICE (cpu|cuda), STEPS (3-case run), SLICE_STEPS (1/3/10-slice runs), FEWSAM (command)
set -euo pipefail
DATA=${1:?usage: benchmarks/acdc_fewshot.sh DATA_DIR [OUT]}
OUT=${2:-runs/acdc_fewshot}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-300}
SLICE_STEPS=${SLICE_STEPS:-$STEPS}
FEWSAM=${FEWSAM:-fewsam}
CACHE=${CACHE:-$HOME/.cache/fewsam}
mkdir -p "$OUT"
common=(--data "$DATA" --device "$DEVICE" --cache "$CACHE" --quiet)
run_fewshot() {  # name, steps, budget option, budget
  local name=$1 steps=$2
  shift 2
  [ -f "$OUT/$name.json" ] && return
  $FEWSAM fit fewshot "${common[@]}" "$@" --steps "$steps" --out "$OUT/run_$name"
  $FEWSAM predict "$OUT/run_$name" --data "$DATA" --split val.list --device "$DEVICE" --cache "$CACHE" \
    --quiet --overwrite --out "$OUT/pred_$name"
  $FEWSAM evaluate --pred "$OUT/pred_$name" --data "$DATA" --split val.list --quiet --json "$OUT/$name.json"
}
run_prompted() {  # prompt kind
  local name=sam_$1
  [ -f "$OUT/$name.json" ] && return
  [ -d "$OUT/run_$name" ] || $FEWSAM fit prompted --prompt "$1" --out "$OUT/run_$name"
  $FEWSAM predict "$OUT/run_$name" --data "$DATA" --split val.list --device "$DEVICE" --cache "$CACHE" \
    --quiet --overwrite --out "$OUT/pred_$name"
  $FEWSAM evaluate --pred "$OUT/pred_$name" --data "$DATA" --split val.list --quiet --json "$OUT/$name.json"
}
run_fewshot fewshot_3cases "$STEPS" --labeled-cases 3
run_prompted points
run_prompted box
run_fewshot fewshot_10slices "$SLICE_STEPS" --labeled-slices 10
run_fewshot fewshot_3slices "$SLICE_STEPS" --labeled-slices 3
run_fewshot fewshot_1slice "$SLICE_STEPS" --labeled-slices 1
python3 "$(dirname "$0")/table.py" "$OUT"/*.json
