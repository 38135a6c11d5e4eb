# Sourced by the *_gpu.sh benchmarks: the GPU image's set-up, and fit-then-predict with a shared
# time limit. Expects B (bundle: whl/, w/), D (data), DEV, PY, STEPS, VAL_EVERY, FIT_LIMIT,
# O (summary and results), R (runs), C (embedding cache).
W=$B/w/lite_medsam_fp16.pth
mkdir -p "$O" "$R"
if [ "$PY" = python3 ]; then  # the GPU image: monai from the bundle, nibabel's import stubbed (h5 data)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $B/whl/*.whl || exit 1
  mkdir -p /tmp/stub/nibabel && printf 'import types as _t\nclass ImageFileError(Exception):\n    pass\nfilebasedimages = _t.SimpleNamespace(ImageFileError=ImageFileError)\n' > /tmp/stub/nibabel/__init__.py
  export PYTHONPATH=$PWD/src:/tmp/site:/tmp/stub
fi
export PYTHONUNBUFFERED=1 FEWSAM_NO_REEXEC=1 OMP_NUM_THREADS=2
T0=$(date +%s)
FS="$PY -m fewsam"
SAM="--model litemedsam --checkpoint $W --cache $C"
COMMON="--data $D --device $DEV --quiet --val-every $VAL_EVERY --steps $STEPS ${RECIPE:-}"
SM="--warmup-steps $((STEPS / 5)) --refresh-every $((STEPS / 5)) --ramp-steps $((STEPS / 10))"
SM="$SM --sam-steps $((STEPS / 10)) --sam-round-steps $((STEPS / 40))"
log() { echo "$(( $(date +%s) - T0 ))s $*" | tee -a "$O/summary.txt"; }
fit() {  # name, then the fit arguments
  local name=$1; shift
  local left=$(( FIT_LIMIT - ($(date +%s) - T0) ))
  timeout "$(( left > 10 ? left : 10 ))" $FS fit "$@" --out "$R/$name" > "$R/$name.log" 2>&1
  log "fit $name rc=$? last=$(tail -n 1 "$R/$name/fit_log.jsonl" 2>/dev/null | cut -c1-160)"
  $FS predict "$R/$name" --data $D --split val --out "$R/pred_$name" --device $DEV --cache $C --quiet \
    >> "$R/$name.log" 2>&1
  log "predict $name rc=$?"
  if [[ $name == sm* ]]; then  # SAM-Match: also the student refined by the run's SAM at test time
    $FS predict "$R/$name" --data $D --split val --out "$R/pred_${name}_refined" --device $DEV --cache $C --quiet \
      --refine-with-sam >> "$R/$name.log" 2>&1
    log "predict $name --refine-with-sam rc=$?"
  fi
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$O/summary.txt" 2>/dev/null
