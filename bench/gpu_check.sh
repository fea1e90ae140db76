#!/usr/bin/env bash
# GPU acceptance check for pipnet-tf (issue #12), for a machine with NVIDIA GPU(s) and this
# project installed (e.g. `make venv`, then `.venv/bin/pip install 'tensorflow[and-cuda]==2.21.0'`).
# About 10 minutes: the test suite with the GPUs visible, then bench/gpu_check.py:
#   - convnext_tiny_26 at 224 trains a few phase-2 steps in bf16 (float16 + loss scaling on
#     GPUs without bf16) under MirroredStrategy over all GPUs, with finite losses;
#   - the float32 loss of one global batch is the same with 1 and with all replicas (≤ 1e-4);
#   - inference and training images/s at batch 64, as JSON (bench/gpu_check.json).
# Without a GPU it runs the CPU part (the test suite) and skips the GPU steps with a message.
#
#   bench/gpu_check.sh                 # everything
#   bench/gpu_check.sh --no_tests      # only the GPU checks
#   bench/gpu_check.sh --tests "tests/model_test.py"   # a subset of the suite
#   bench/gpu_check.sh --no_tests --cpu_smoke          # no GPU: the checks on 2 logical CPUs
# Other flags go to bench/gpu_check.py (--out, --batch, --net, --image_size, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

TESTS="tests"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no_tests) TESTS="" ;;
    --tests) shift; TESTS="$1" ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
case " ${ARGS[*]-} " in *" --out"*) ;; *) ARGS+=(--out bench/gpu_check.json) ;; esac

GPUS=$("$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null || echo 0)
echo "gpu_check: TensorFlow sees ${GPUS} GPU(s)"
status=0
if [ -n "$TESTS" ]; then
  echo "gpu_check: test suite (${TESTS}) with $([ "$GPUS" -gt 0 ] && echo "the GPUs" || echo "no GPU") visible"
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -ra $TESTS || status=1
fi
"$PY" -m bench.gpu_check "${ARGS[@]}" || status=1
[ "$status" = 0 ] && echo "gpu_check: PASSED" || echo "gpu_check: FAILED"
exit "$status"
