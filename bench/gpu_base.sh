#!/usr/bin/env bash
# One GPU run: train the gpu profile's base (params/gpu.yaml, the `small` preset) from its params, score it on the
# profile's whole single-image test and MIG-Bench, and write OUTDIR/checkpoint and OUTDIR/gpu_base.json
# (bench/gpu_base.py says what is in it). Sized for at most 9 minutes on one H100/H200; stopped at 9.
# Installs nothing: run it where `make venv` (or the same pins) is installed.
#
#   bash bench/gpu_base.sh OUTDIR [--profile P] [--set KEY=VALUE ...]
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash bench/gpu_base.sh OUTDIR [--profile P] [--set KEY=VALUE ...]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x $py ]] || py="$(command -v python3)"
mkdir -p "$1"
PYTHONUNBUFFERED=1 timeout "${GPU_BASE_TIMEOUT_S:-540}" "$py" "$here/bench/gpu_base.py" "$@" 2>&1 | tee "$1/gpu_base.log"
