#!/usr/bin/env bash
# For a session lent a GPU (one call of the device tool, ~10 min): run the Pallas kernel tests through
# the Triton lowering, then the GPU benchmark of the fused kernel against the XLA paths.
#
#   bash benchmarks/gpu_check.sh          # tests (<= 4 min) + L and W2 in fp32 and bf16 (<= 5 min)
#   bash benchmarks/gpu_check.sh rest     # no tests; W1, W3 and the n sweep (<= 9 min), a second call
#
# Results: benchmarks/results/gpu/results.json and sweep.png; every finished row also goes to
# partial.jsonl at once, so a run cut by its time limit still leaves data (all copied to $OUT if set).
set -uo pipefail
PY="${PYTHON:-python3}"   # the device image: python3 (jax 0.11 + CUDA 13 plugin, flax, optax, pytest)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=cuda            # tests/conftest.py only sets cpu when this is unset
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # each benchmark case is its own process
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
"$PY" -c "import jax; print(jax.__version__, jax.devices())"

tests_rc=0
if [ "${1:-quick}" = rest ]; then
  echo "== benchmark: W1, W3, sweep"
  timeout 540 "$PY" benchmarks/run.py --sections attention sweep --shapes W1 W3 \
    --impls chunked pallas pallas_fast naive unchunked --dtypes float32 bfloat16 \
    --sweep-n 256 1024 4096 16384 --repeats 10 --warmup 2
else
  echo "== kernel tests on GPU (Triton lowering)"
  timeout 240 "$PY" -m pytest -x -q tests/test_kernels_additive.py
  tests_rc=$?
  echo "== benchmark: L, W2"
  timeout 300 "$PY" benchmarks/run.py --sections attention --shapes L W2 \
    --impls chunked pallas pallas_fast naive --dtypes float32 bfloat16 --repeats 10 --warmup 2
fi
bench_rc=$?
if [ -n "${OUT:-}" ]; then cp -r benchmarks/results/gpu "$OUT/" 2>/dev/null || true; fi
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
