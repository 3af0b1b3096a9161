#!/usr/bin/env bash
# The GPU measurements of the fast generation work, in one run of at most 9 minutes on one H100/H200. Each
# writes its JSON into OUTDIR (with its log):
#   1. rollout_check.json  - the fast rollout path (merged LoRA at fixed addresses, static cache, compiled
#                            decoding) against trl's own on the same batch and seed: identical rollouts
#                            (bench/rollout_check.py, 7B, two steps of 128-token rollouts);
#   2. grpo_step_fast.json - the reference GRPO step with the fast path (bench/grpo_step.py --size 7b
#                            --set compiled_rollouts=true: 2 prompts x 8 rollouts of 1024 tokens; the warm-up
#                            step, which compiles, then one measured step);
#   3. eval_speed.json     - the evaluation batched against one request at a time on the shipped embedded
#                            base over the smoke world's MIG-Bench, identical greedy predictions counted
#                            (bench/eval_speed.py).
# A step that runs out of its share of the 9 minutes is stopped and the next one runs; gpu_check.json says
# which finished. Installs nothing: run it where `make venv` (or the same pins: trl, datasets, the pinned
# transformers) is installed. The sizes can be made small for a CPU check of the script (tests/test_speed.py):
# GPU_CHECK_SIZE (7b), GPU_CHECK_COMPLETION (1024; the rollout check takes an eighth), GPU_CHECK_IMAGE (448),
# GPU_CHECK_EVAL_ITEMS (10 per task).
#
#   bash bench/gpu_check.sh OUTDIR
set -uo pipefail
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR" >&2
    exit 2
fi
out="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x $py ]] || py="$(command -v python3)"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${GPU_CHECK_TIMEOUT_S:-540}))
declare -A status

step() {  # step NAME SECONDS COMMAND...: run it for at most SECONDS (or what is left), log it, record its exit code
    local name=$1 want=$2
    shift 2
    local left=$((deadline - SECONDS - 5))
    ((want > left)) && want=$left
    if ((want < 30)); then
        status[$name]="skipped: no time left"
        return
    fi
    echo "== $name (at most $want s)"
    local t0=$SECONDS
    timeout "$want" "$@" > >(tee "$out/$name.log") 2>&1
    local rc=$?
    status[$name]="exit $rc after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
size=${GPU_CHECK_SIZE:-7b}
completion=${GPU_CHECK_COMPLETION:-1024}
image=${GPU_CHECK_IMAGE:-448}
step rollout_check 170 "$py" "$here/bench/rollout_check.py" --size "$size" --completion $((completion / 8)) --image-size "$image" \
    --out "$out/rollout_check.json"
step grpo_step_fast 270 "$py" "$here/bench/grpo_step.py" --size "$size" --completion "$completion" --image-size "$image" --steps 1 --warmup 1 \
    --set compiled_rollouts=true --out "$out/grpo_step_fast.json"
step eval_data 30 "$py" -m mirg_lib data --profile smoke
step eval_speed 65 "$py" "$here/bench/eval_speed.py" --profile smoke --checkpoint "$here/checkpoints/embedded-base" \
    --items-per-task "${GPU_CHECK_EVAL_ITEMS:-10}" --max-new-tokens 64 --batch-size 64 --prompt plain --out "$out/eval_speed.json"

{
    echo "{"
    echo "  \"gpu\": \"$(tr -d '"\n' < "$out/gpu.txt")\","
    echo "  \"seconds\": $SECONDS,"
    sep=""
    echo "  \"steps\": {"
    for name in rollout_check grpo_step_fast eval_data eval_speed; do
        printf '%s    "%s": "%s"' "$sep" "$name" "${status[$name]:-not run}"
        sep=$',\n'
    done
    printf '\n  }\n}\n'
} > "$out/gpu_check.json"
cat "$out/gpu_check.json"
