#!/usr/bin/env bash
# For a machine with a TPU (one call, about 9 min): compile the Pallas TPU (Mosaic) kernel on device and
# test it against the XLA path, then time it against the XLA paths (JSON).
#
#   bash benchmarks/tpu_check.sh          # kernel tests on TPU (<= 4 min) + L and W2, fp32 and bf16 (<= 5 min)
#   bash benchmarks/tpu_check.sh rest     # no tests; W1 and W3 in fp32 and bf16 (<= 9 min), a second call
#
# Results: benchmarks/results/tpu/results.json; every finished row also goes to partial.jsonl at once,
# so a run cut by its time limit still leaves data (all copied to $OUT if set).
set -uo pipefail
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export JAX_PLATFORMS=tpu             # tests/conftest.py only sets cpu when this is unset
"$PY" -c "import jax; print(jax.__version__, jax.devices())" || exit 1

tests_rc=0
if [ "${1:-quick}" = rest ]; then
  echo "== benchmark: W1, W3"
  timeout 540 "$PY" benchmarks/run.py --sections attention --shapes W1 W3 \
    --impls chunked unchunked pallas_tpu --dtypes float32 bfloat16 --repeats 10 --warmup 2 \
    --out benchmarks/results/tpu
else
  echo "== kernel tests on TPU (Mosaic); both sides' float32 matmuls at full precision"
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 "$PY" -m pytest -x -q tests/test_kernels_tpu.py
  tests_rc=$?
  echo "== benchmark: L, W2"
  timeout 300 "$PY" benchmarks/run.py --sections attention --shapes L W2 \
    --impls chunked pallas_tpu --dtypes float32 bfloat16 --repeats 10 --warmup 2 \
    --out benchmarks/results/tpu
fi
bench_rc=$?
if [ -n "${OUT:-}" ]; then cp -r benchmarks/results/tpu "$OUT/" 2>/dev/null || true; fi
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
