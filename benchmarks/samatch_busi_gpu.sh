#!/usr/bin/env bash
# BUSI on one lent GPU (device tool): supervised / FixMatch (--no-sam) / SAM-Match, 30 labelled
# images, each with several seeds, all jobs at once. The bundle .gbusi/ is made here first from
# .gsm3/ (benchmarks/samatch_bundle.py: float16 LiteMedSAM weights, monai wheel) and the BUSI
# folder's benign + malignant images (normal ones are in neither split), e.g. from data/busi:
#   S=data/busi; mkdir -p .gbusi/busi && cp -rl .gsm3/w .gsm3/whl .gbusi/ &&
#   cp -rl $S/benign $S/malignant .gbusi/busi/ && grep -v ',normal,' $S/index.csv > .gbusi/busi/index.csv
# Usage there:  STEPS=1000 SEEDS="0 1 2" FIT_LIMIT=170 bash benchmarks/samatch_busi_gpu.sh   (carry .gbusi)
# Schedule as benchmarks/samatch_cpu.sh for BUSI: warm-up = refresh = ramp = STEPS/5, SAM decoder
# 200 steps, box margin 30 px. $OUT/results.tgz: logs, configs, predictions (evaluate them here).
# Dry run here: PY=.venv/bin/python DEVICE=cpu STEPS=10 SEEDS=0 OUT=/tmp/o RUNS=/tmp/r CACHE=/tmp/c \
#               bash benchmarks/samatch_busi_gpu.sh
set -uo pipefail
B=${BUNDLE:-.gbusi} D=${BUNDLE:-.gbusi}/busi DEV=${DEVICE:-cuda} PY=${PY:-python3}
STEPS=${STEPS:-1000} VAL_EVERY=${VAL_EVERY:-$((STEPS / 10))} FIT_LIMIT=${FIT_LIMIT:-170}
O=${OUT:-out} R=${RUNS:-/tmp/runs} C=${CACHE:-/tmp/cache} SEEDS=${SEEDS:-0 1 2}
source "$(dirname "$0")/gpu_common.sh"
REFRESH=$((STEPS / 5))
SEMI="--warmup-steps $REFRESH --refresh-every $REFRESH --ramp-steps $REFRESH"
for s in $SEEDS; do
  fit "sup_s$s" supervised $COMMON --labeled-images 30 --seed $s &
  fit "fm_s$s" samatch $COMMON --labeled-images 30 --seed $s $SEMI --no-sam &
done
$FS embed --data $D --split train $SAM --device $DEV --quiet > "$R/embed.log" 2>&1
$FS embed --data $D --split val $SAM --device $DEV --quiet >> "$R/embed.log" 2>&1
log "embedded rc=$?"
for s in $SEEDS; do
  fit "sm_s$s" samatch $COMMON --labeled-images 30 --seed $s $SEMI $SAM --sam-steps 200 --box-margin 30 &
done
wait
log "all done"
tar czf "$O/results.tgz" -C "$R" --exclude='*.pt' --exclude='pseudo_labels' . 2>/dev/null
log "packed $(du -h "$O/results.tgz" | cut -f1)"
