"""Reusable benchmark harness: fresh-process timings, compiled and touched memory, tables, JSON.

A *case* is a builder: a module-level function, named "package.module:function", that takes keyword
arguments and returns `(fn, args)` with `fn` a `jax.jit`-wrapped function. `measure_case` runs it in
a fresh Python process (spawned, so nothing compiled or allocated earlier leaks in) and returns:

    compile_s        seconds to lower + compile
    temp_bytes       compiled `memory_analysis()` temporaries (XLA's plan, all backends)
    touched_bytes    peak RSS rise during the first call (memory first touched per call; Linux
                     /proc VmHWM, reset before the call; host memory, so meaningful on CPU only)
    median_s, times  median and all wall times of back-to-back calls after `warmup` calls
    probes           results of the optional `probe` function, called before and after the timing

`compile_only(builder, kwargs)` lowers and compiles without running (for sizes that cannot fit).
`matmul_rate()` and `fused_tanh_rate()` measure this machine's rates for lower-bound estimates;
`print_table` and `write_json` format the results.

Example (see benchmarks/attention.py):

    res = measure_case("benchmarks.attention:build_case", {"shape": "W2", "impl": "chunked"})
"""

from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])


def _resolve(builder: str):
    """'pkg.mod:fn' -> the function (the repo root is put on sys.path first)."""
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    module, _, name = builder.partition(":")
    return getattr(import_module(module), name)


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _block(out):
    import jax

    return jax.block_until_ready(out)


def _measure_in_process(builder: str, kwargs: dict, warmup: int, repeats: int, probe=None) -> dict:
    """Compile, touch-measure one call, then time `repeats` back-to-back calls (in this process)."""
    fn, args = _resolve(builder)(**kwargs)
    probes = [] if probe is None else [_resolve(probe)()]
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    touched = None
    if _reset_peak_rss():
        base = _read_status_kb("VmRSS")
        _block(compiled(*args))
        peak = _read_status_kb("VmHWM")
        touched = None if base is None or peak is None else (peak - base) * 1024
    else:
        _block(compiled(*args))
    times = timed_calls(lambda: _block(compiled(*args)), warmup, repeats)
    if probe is not None:
        probes.append(_resolve(probe)())
    return {
        "probes": probes,
        "compile_s": compile_s,
        "temp_bytes": temp,
        "touched_bytes": touched,
        "median_s": statistics.median(times),
        "times": times,
    }


def _child(queue, fn, args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report any failure to the parent instead of hanging it
        queue.put(("error", f"{type(e).__name__}: {e}"))


def run_in_fresh_process(fn, args: tuple, *, timeout: float, label: str):
    """Call the module-level function `fn(*args)` in a fresh spawned process and return its result.

    Raises RuntimeError naming `label` with the child's error message, if it dies without one (e.g. an
    XLA abort on a bad XLA_FLAGS entry), or if it does not finish in `timeout` seconds.
    Used by every benchmark so each case starts from a clean process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:  # poll, so a child that dies without reporting (abort, OOM kill) fails at once
            try:
                status, payload = queue.get(timeout=1.0)
                break
            except Exception as e:
                if not proc.is_alive() and queue.empty():
                    raise RuntimeError(f"{label} died with exit code {proc.exitcode}") from e
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{label} did not finish in {timeout} s") from e
    finally:
        proc.join(timeout=30)
    if status != "ok":
        raise RuntimeError(f"{label} failed: {payload}")
    return payload


def measure_case(
    builder: str,
    kwargs: dict | None = None,
    *,
    warmup: int = 3,
    repeats: int = 10,
    timeout: float = 600,
    probe: str | None = None,
) -> dict:
    """Measure a case in a fresh spawned process; returns the dict described in the module docstring.

    probe: optional "module:function" (no arguments, returns a JSON-able value) called in the child
    just before and just after the timed calls, e.g. to measure machine rates under the same load;
    its two results are returned under "probes".
    Raises RuntimeError with the child's error message if the case fails or times out.
    """
    args = (builder, dict(kwargs or {}), warmup, repeats, probe)
    return run_in_fresh_process(_measure_in_process, args, timeout=timeout, label=f"case {builder} {kwargs}")


def compile_only(builder: str, kwargs: dict | None = None) -> dict:
    """Lower and compile a case without running it (in this process): compile_s and temp_bytes."""
    fn, args = _resolve(builder)(**dict(kwargs or {}))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    analysis = compiled.memory_analysis()
    return {
        "compile_s": time.perf_counter() - t0,
        "temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
        "argument_bytes": None if analysis is None else int(analysis.argument_size_in_bytes),
        "output_bytes": None if analysis is None else int(analysis.output_size_in_bytes),
    }


def _time_median(fn, args, repeats: int) -> float:
    return statistics.median(timed_calls(lambda: _block(fn(*args)), 2, repeats))


def matmul_rate(size: int = 1024, dtype: str = "float32", repeats: int = 10) -> float:
    """Measured float32 matmul rate of the default backend in FLOP/s ((size, size) @ (size, size))."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (size, size), dtype)
    b = jax.random.normal(k2, (size, size), dtype)
    t = _time_median(jax.jit(jnp.matmul), (a, b), repeats)
    return 2.0 * size**3 / t


def fused_tanh_rate(rows: int = 256, cols: int = 4096, repeats: int = 10) -> float:
    """Measured rate (elements/s) of tanh fused into a reduction: sum(tanh(x + y), -1), no big temporary.

    x (rows, 1) + y (1, cols) broadcast inside the fusion, so memory traffic is negligible and the
    figure is the backend's best elementwise-tanh throughput.
    """
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (rows, 1), jnp.float32)
    y = jax.random.normal(k2, (1, cols), jnp.float32)
    fn = jax.jit(lambda x, y: jnp.sum(jnp.tanh(x + y), axis=-1))
    return rows * cols / _time_median(fn, (x, y), repeats)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict:
    """Machine and library facts to store with results (load average included: the box is shared)."""
    import jax

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg": load,
    }


def timed_calls(call, warmup: int, repeats: int) -> list[float]:
    """Wall times (s) of `repeats` calls of `call()` (which must block until done) after `warmup` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], file=None) -> None:
    """Print rows as a Markdown table. columns: (key, header, format spec such as '.2f' or '')."""

    def cell(row, key, spec):
        v = row.get(key)
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    headers = [h for _, h, _ in columns]
    body = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    print("| " + " | ".join(headers) + " |", file=file)
    print("| " + " | ".join("---" for _ in headers) + " |", file=file)
    for line in body:
        print("| " + " | ".join(line) + " |", file=file)


def write_json(path: str | os.PathLike, results, **extra) -> Path:
    """Write {"environment": ..., **extra, "results": results} as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **extra, "results": results}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path
