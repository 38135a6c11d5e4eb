#!/usr/bin/env bash
# ACDC few-shot table: few-shot SAM (3 labelled cases; 1, 3, 10 labelled slices) beside zero-shot
# SAM with oracle point and box prompts, on the 20 validation volumes (10 patients, ED + ES).
# Usage: benchmarks/acdc_fewshot.sh [DATA] [OUT] ; env: DEVICE (cpu|cuda), STEPS, FEWSAM (command)
set -euo pipefail
DATA=${1:-../shared/data/acdc}
OUT=${2:-runs/acdc_fewshot}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-300}
FEWSAM=${FEWSAM:-fewsam}
CACHE=${CACHE:-$HOME/.cache/fewsam}
mkdir -p "$OUT"
common=(--data "$DATA" --device "$DEVICE" --cache "$CACHE" --quiet)
run_fewshot() {  # name, budget option, budget
  local name=$1
  shift
  [ -f "$OUT/$name.json" ] && return
  $FEWSAM fit fewshot "${common[@]}" "$@" --steps "$STEPS" --out "$OUT/run_$name"
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
run_fewshot fewshot_3cases --labeled-cases 3
run_fewshot fewshot_1slice --labeled-slices 1
run_fewshot fewshot_3slices --labeled-slices 3
run_fewshot fewshot_10slices --labeled-slices 10
run_prompted points
run_prompted box
python3 "$(dirname "$0")/table.py" "$OUT"/*.json
