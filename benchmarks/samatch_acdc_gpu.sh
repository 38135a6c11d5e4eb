#!/usr/bin/env bash
# ACDC on one lent GPU (device tool), all jobs at once, from the bundle .gsm3/ made here by
# benchmarks/samatch_bundle.py (fp16 LiteMedSAM weights, monai wheel, 20 val volumes as they are,
# uint8 training slices: 7 labelled cases + a seeded part of the unlabelled pool):
#   sup3 sup7 fm3 fm7   supervised / FixMatch (--no-sam) with 3 and 7 labelled cases;
#   sm3 sm7 sm3fair     SAM-Match with 3 and 7 cases, 3 cases with fair scaling by pathology (gamma 1);
#   sm3c sm7c           SAM-Match with --prompt-clicks positive;
#   fewshot             few-shot, 3 cases, fair scaling by pathology, gamma 0 / 0.5 / 1 / 2 in turn.
# JOBS names the jobs to run (default: all but sm3c sm7c); all run at once.
# Each fit may run FIT_LIMIT seconds (a fit stopped there keeps its best validated checkpoint and
# its log says the step it reached); every run then predicts the val volumes. $OUT/results.tgz
# holds the predictions, logs and configs: evaluate them where the original data is.
# Usage there:  STEPS=4000 bash benchmarks/samatch_acdc_gpu.sh   (JOBS="sup3 fm3 sm3": a subset)
# RECIPE: extra student options for every U-Net fit (supervised too), e.g. RECIPE="--optimizer sgd" for the
# SGD student of docs/results.md, section 2.7 "Earlier configurations (SGD student, box prompts)".
# Dry run here (STEPS >= 5: --refresh-every is STEPS/5 and must be at least 1):
#   PY=.venv/bin/python DEVICE=cpu STEPS=40 FS_STEPS=2 VAL_EVERY=20 OUT=/tmp/o RUNS=/tmp/r CACHE=/tmp/c \
#   bash benchmarks/samatch_acdc_gpu.sh
set -uo pipefail
B=${BUNDLE:-.gsm3} D=${BUNDLE:-.gsm3}/acdc DEV=${DEVICE:-cuda} PY=${PY:-python3}
STEPS=${STEPS:-4000} VAL_EVERY=${VAL_EVERY:-400} FS_STEPS=${FS_STEPS:-400} FIT_LIMIT=${FIT_LIMIT:-400}
O=${OUT:-out} R=${RUNS:-/tmp/runs} C=${CACHE:-/tmp/cache} JOBS=${JOBS:-sup3 sup7 fm3 fm7 sm3 sm7 sm3fair fewshot}
source "$(dirname "$0")/gpu_common.sh"
run_job() {  # one named job of JOBS, in the background
  case $1 in
    sup3) fit sup3 supervised $COMMON --labeled-cases 3 & ;;
    sup7) fit sup7 supervised $COMMON --labeled-cases 7 & ;;
    fm3) fit fm3 samatch $COMMON --labeled-cases 3 --no-sam & ;;
    fm7) fit fm7 samatch $COMMON --labeled-cases 7 --no-sam & ;;
    sm3) fit sm3 samatch $COMMON --labeled-cases 3 $SM $SAM & ;;
    sm7) fit sm7 samatch $COMMON --labeled-cases 7 $SM $SAM & ;;
    sm3fair) fit sm3fair samatch $COMMON --labeled-cases 3 $SM $SAM --fair-attribute group --fair-gamma 1 & ;;
    sm3c) fit sm3c samatch $COMMON --labeled-cases 3 $SM $SAM --prompt-clicks positive & ;;
    sm7c) fit sm7c samatch $COMMON --labeled-cases 7 $SM $SAM --prompt-clicks positive & ;;
    fewshot) (for g in 0 0.5 1 2; do
        fit "fs3_g$g" fewshot --data $D --device $DEV --quiet --labeled-cases 3 --steps $FS_STEPS $SAM \
          --fair-attribute group --fair-gamma $g ${FS_ARGS:-}
      done) & ;;
    *) log "unknown job $1"; exit 2 ;;
  esac
}
for job in $JOBS; do [[ $job == sup* || $job == fm* ]] && run_job "$job"; done
if [[ " $JOBS " == *" sm"* || " $JOBS " == *" fewshot "* ]]; then  # SAM's jobs need the embeddings
  $FS embed --data $D --split train $SAM --device $DEV --quiet > "$R/embed.log" 2>&1
  $FS embed --data $D --split val $SAM --device $DEV --quiet >> "$R/embed.log" 2>&1
  log "embedded rc=$?"
fi
for job in $JOBS; do [[ $job == sup* || $job == fm* ]] || run_job "$job"; done
wait
log "all done"
tar czf "$O/results.tgz" -C "$R" --exclude='*.pt' --exclude='pseudo_labels' . 2>/dev/null
log "packed $(du -h "$O/results.tgz" | cut -f1)"
