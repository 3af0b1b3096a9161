#!/usr/bin/env bash
# Download, here, the wheels a GPU machine without network lacks for bench/gpu_check.sh and bench/gpu_base.sh:
# the project's pins of trl, datasets, transformers, peft and what they need beyond that machine's image
# (Python 3.12, torch, accelerate, pyarrow, ... as its package list shows; never tried there: if an import
# fails, carry what it names). Into DIR (default .whl/, ignored by git), for Python 3.12 on x86-64 Linux.
# Then, on the GPU machine, with DIR carried:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#       && export PYTHONPATH=/tmp/site && PYTHON=python3 bash bench/gpu_check.sh "$OUT"
#
#   bash bench/gpu_wheels.sh [DIR]
set -euo pipefail
dir="${1:-.whl}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x $py ]] || py="$(command -v python3)"
# not huggingface_hub: the machine's 1.33 satisfies transformers and datasets (>= 1.31), and 2.x needs httpx2
pins=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.23.0 tokenizers==0.23.3 peft==0.21.2
      fsspec==2026.9.0)
mkdir -p "$dir"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${pins[@]}"
du -sh "$dir"
ls "$dir"
