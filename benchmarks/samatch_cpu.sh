#!/usr/bin/env bash
# SAM-Match beside its baselines on this machine (CPU): supervised U-Net (labelled only), FixMatch
# (`fit samatch --no-sam`) and SAM-Match, each followed by predict + evaluate on the validation list.
# Wall time and peak memory of every fit come from GNU time (/usr/bin/time -v).
# Usage: benchmarks/samatch_cpu.sh DATA_DIR OUT BUDGET...      e.g.
#   benchmarks/samatch_cpu.sh data/acdc runs/sm_acdc3 --labeled-cases 3
#   BOX_MARGIN=30 benchmarks/samatch_cpu.sh data/busi runs/sm_busi30 --labeled-images 30
# env: STEPS (student steps), REFRESH (warm-up = refresh interval = ramp), SAM_STEPS, UNLABELED_LIMIT,
#      IMAGE_SIZE, BOX_MARGIN, METHODS (subset of "supervised fixmatch samatch"), CACHE, FEWSAM,
#      SAM_ARGS (extra options of the SAM-Match fit alone, e.g. "--prompt-clicks none")
set -euo pipefail
DATA=${1:?usage: benchmarks/samatch_cpu.sh DATA_DIR OUT BUDGET...}
OUT=${2:?usage: benchmarks/samatch_cpu.sh DATA_DIR OUT BUDGET...}
shift 2
BUDGET=("$@")
STEPS=${STEPS:-1000}
REFRESH=${REFRESH:-$((STEPS / 5))}
SAM_STEPS=${SAM_STEPS:-200}
IMAGE_SIZE=${IMAGE_SIZE:-256}
BOX_MARGIN=${BOX_MARGIN:-10}
METHODS=${METHODS:-supervised fixmatch samatch}
CACHE=${CACHE:-$HOME/.cache/fewsam}
FEWSAM=${FEWSAM:-fewsam}
LIMIT=()
[ -n "${UNLABELED_LIMIT:-}" ] && LIMIT=(--unlabeled-limit "$UNLABELED_LIMIT")
mkdir -p "$OUT"
common=(--data "$DATA" "${BUDGET[@]}" --quiet --steps "$STEPS" --val-every $((STEPS / 10)) --image-size "$IMAGE_SIZE")
semi=("${LIMIT[@]}" --warmup-steps "$REFRESH" --refresh-every "$REFRESH" --ramp-steps "$REFRESH")
for method in $METHODS; do
  case $method in
    supervised) args=(fit supervised "${common[@]}") ;;
    fixmatch) args=(fit samatch "${common[@]}" "${semi[@]}" --no-sam) ;;
    samatch) args=(fit samatch "${common[@]}" "${semi[@]}" --cache "$CACHE" --sam-steps "$SAM_STEPS" --box-margin "$BOX_MARGIN" ${SAM_ARGS:-}) ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
  if [ ! -f "$OUT/$method.json" ]; then
    /usr/bin/time -v -o "$OUT/time_$method.txt" $FEWSAM "${args[@]}" --out "$OUT/run_$method" | tee "$OUT/fit_$method.txt"
    $FEWSAM predict "$OUT/run_$method" --data "$DATA" --cache "$CACHE" --quiet --overwrite --out "$OUT/pred_$method"
    $FEWSAM evaluate --pred "$OUT/pred_$method" --data "$DATA" --quiet --json "$OUT/$method.json"
  fi
  echo "$method: $(grep -E 'Elapsed|Maximum resident' "$OUT/time_$method.txt" | sed 's/^\s*//' | tr '\n' ' ')"
done
python3 "$(dirname "$0")/table.py" "$OUT"/*.json
