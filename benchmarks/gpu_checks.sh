#!/usr/bin/env bash
# Every GPU check of this project in one run, for a lent GPU machine with a short time budget (not a test).
#
#     bash benchmarks/gpu_checks.sh [OUT]        # writes gpu_checks.log (and the pieces' output) under OUT
#
# 1. tests/test_cuda.py and tests/test_matching.py (the GPU path against the CPU path);
# 2. benchmarks/speed.py --device cuda: timing of float32, mixed and bfloat16 (no accuracy: minutes);
# 3. benchmarks/vs_anomalib.py --device cuda: this project's default against anomalib's CFA on the GPU, if
#    anomalib imports there (a machine without a package registry: carry its wheels, see below).
# Wheels the machine lacks (this project needs kornia; anomalib several more) can travel in .whl/, which this
# script installs with --target first. The machine's own torch is used, whatever its version: its version
# is printed with every figure. Written for such a machine; until a session with a GPU has run it, it has run
# only its CPU-side pieces.
set -uo pipefail
OUT=${1:-${OUT:-gpu-checks}}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    echo "== tests on the GPU"
    timeout 900 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_matching.py
    echo "== speed on the GPU"
    timeout 900 python3 benchmarks/speed.py --device cuda --images 64 --epochs 2 --batch 16 --repeats 1 \
        --skip-accuracy --variants float32,mixed,bfloat16
    echo "== against anomalib on the GPU"
    if python3 -c "import anomalib" 2>/dev/null; then
        timeout 900 python3 benchmarks/vs_anomalib.py --device cuda --anomalib-python python3 --repeats 2 \
            --quiet 1.0 --wait 0
    else
        echo "anomalib does not import here: carry its wheels in .whl/ for this row"
    fi
} 2>&1 | tee "$LOG"
