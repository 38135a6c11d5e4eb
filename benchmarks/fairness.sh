#!/usr/bin/env bash
# Fairness measurements: per-group Dice, ES-Dice and worst-group gap of few-shot SAM,
# with and without fair error-bound scaling, plus Wilcoxon tests and Markdown/HTML reports.
#   multisite: prostate by site (17 labelled train slices: all train slices that have a mask),
#              fundus by domain (12 labelled train slices); test split.
#   ACDC: 3 labelled cases (first 68 lines of train_slices.list), val.list, by pathology and BMI band.
# The multisite folders have train/test splits only, so the fits use --val-split test with
# --val-every = --steps: validated once, at the last step, the test split never selects a model.
# ACDC does the same with val.list (no gamma sweep: gamma = 1, the paper's value).
# Usage: benchmarks/fairness.sh DATA_ROOT [OUT]; env: DEVICE, STEPS, BATCH, FEWSAM, CACHE
# DATA_ROOT holds multisite/ProstateSlice, multisite/Fundus and acdc, e.g. benchmarks/fairness.sh data
set -euo pipefail
DATA=${1:?usage: benchmarks/fairness.sh DATA_ROOT [OUT]}
OUT=${2:-runs/fairness}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-100}
BATCH=${BATCH:-4}
FEWSAM=${FEWSAM:-fewsam}
CACHE=${CACHE:-$HOME/.cache/fewsam}
mkdir -p "$OUT"
run() {  # name data split group-by budget-option budget [fit options...]
  local name=$1 data=$2 split=$3 by=$4 budget=$5 k=$6
  shift 6
  [ -f "$OUT/$name.eval.json" ] && return
  $FEWSAM fit fewshot --data "$data" "$budget" "$k" --val-split "$split" --steps "$STEPS" --val-every "$STEPS" \
    --batch-size "$BATCH" --device "$DEVICE" --cache "$CACHE" --quiet --out "$OUT/$name" "$@"
  $FEWSAM predict "$OUT/$name" --data "$data" --split "$split" --device "$DEVICE" --cache "$CACHE" --quiet \
    --overwrite --out "$OUT/$name.pred"
  $FEWSAM evaluate --pred "$OUT/$name.pred" --data "$data" --split "$split" --group-by "$by" --quiet \
    --json "$OUT/$name.eval.json"
}
P=$DATA/multisite/ProstateSlice
run prostate_k17 "$P" test site --labeled-slices 17
run prostate_k17_fair1 "$P" test site --labeled-slices 17 --fair-attribute site --fair-gamma 1
run fundus_k12 "$DATA/multisite/Fundus" test site --labeled-slices 12
A=$DATA/acdc
run acdc_fs3 "$A" val.list group --labeled-cases 3
run acdc_fs3_fair1 "$A" val.list group --labeled-cases 3 --fair-attribute group --fair-gamma 1
for name in acdc_fs3 acdc_fs3_fair1; do
  $FEWSAM evaluate --pred "$OUT/$name.pred" --data "$A" --split val.list --group-by bmi --bins bmi:25,30 --quiet \
    --json "$OUT/$name.bmi.json"
done
$FEWSAM compare "$OUT/prostate_k17.eval.json" "$OUT/prostate_k17_fair1.eval.json" --json "$OUT/prostate_compare.json"
$FEWSAM compare "$OUT/acdc_fs3.eval.json" "$OUT/acdc_fs3_fair1.eval.json" --json "$OUT/acdc_compare.json"
$FEWSAM report "$OUT/prostate_k17.eval.json" "$OUT/prostate_k17_fair1.eval.json" --labels "unscaled,fair gamma=1" \
  --title "Few-shot SAM, prostate by site" --out "$OUT/report_prostate"
$FEWSAM report "$OUT/fundus_k12.eval.json" --title "Few-shot SAM, fundus by domain" --out "$OUT/report_fundus"
$FEWSAM report "$OUT/acdc_fs3.eval.json" "$OUT/acdc_fs3_fair1.eval.json" --labels "unscaled,fair gamma=1" \
  --title "Few-shot SAM, ACDC by pathology" --out "$OUT/report_acdc_pathology"
$FEWSAM report "$OUT/acdc_fs3.bmi.json" "$OUT/acdc_fs3_fair1.bmi.json" --labels "unscaled,fair gamma=1" \
  --title "Few-shot SAM, ACDC by BMI band" --out "$OUT/report_acdc_bmi"
