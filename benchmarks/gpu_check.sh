#!/usr/bin/env bash
# For a session lent a GPU (one call of the device tool, ~10 min): run the Pallas kernel tests through
# the Triton lowering, then the GPU benchmark of the fused kernel against the XLA paths.
#
#   bash benchmarks/gpu_check.sh          # tests + large shape L and W2, fp32 and bf16 (~6-8 min, est.)
#   bash benchmarks/gpu_check.sh full     # tests + W1-W3, L, the n sweep and the models (longer)
#
# Results: benchmarks/results/gpu/results.json and sweep.png (copied to $OUT when set).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS=cuda            # tests/conftest.py only sets cpu when this is unset
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # each benchmark case is its own process
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python -c "import jax; print(jax.__version__, jax.devices())"

echo "== kernel tests on GPU (Triton lowering)"
timeout 240 python -m pytest -x -q tests/test_kernels_additive.py
tests_rc=$?

echo "== benchmark"
if [ "${1:-quick}" = full ]; then
  timeout 1500 python benchmarks/run.py --sections attention sweep models \
    --shapes W1 W2 W3 L --dtypes float32 bfloat16 --repeats 10
else
  timeout 420 python benchmarks/run.py --sections attention --shapes L W2 \
    --dtypes float32 bfloat16 --repeats 10 --warmup 2
fi
bench_rc=$?
if [ -n "${OUT:-}" ]; then cp -r benchmarks/results/gpu "$OUT/" 2>/dev/null || true; fi
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
