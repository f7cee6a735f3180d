"""PyTorch peer of the naive formula (eager and torch.compile), measured like benchmarks/harness.py.

Optional: used by benchmarks/run.py only when `torch` is importable (the `bench` extra). Each case runs
in a fresh spawned process; medians of back-to-back calls after warm-up; first-call RSS rise beside.
"""

from __future__ import annotations

import statistics
import time

from benchmarks import harness


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _formula(q, h, v, w_q, w_k, w_a, bias):
    import torch

    hidden = torch.tanh((q @ w_q)[:, :, None, :] + (h @ w_k)[:, None, :, :] + bias)
    scores = torch.einsum("bmna,a->bmn", hidden, w_a)
    return torch.einsum("bmn,bnd->bmd", torch.softmax(scores, dim=-1), v)


def _tied_formula(q, h, w_q, w_k, w_a):
    """The formula with values = keys and no bias (benchmarks/attention.py's signature)."""
    return _formula(q, h, h, w_q, w_k, w_a, 0.0)


def _build(dims: dict, mode: str, compiled: bool, tied: bool = False):
    import torch

    gen = torch.Generator().manual_seed(0)
    b, m, n, d, a = (dims[k] for k in ("B", "m", "n", "d", "a"))
    shapes = [(b, m, d), (b, n, d), (b, n, d), (d, a), (d, a), (a,), (a,)]
    args = [torch.randn(s, generator=gen) for s in shapes]
    args[3] /= d**0.5
    args[4] /= d**0.5
    formula = _formula
    if tied:
        args, formula = [args[0], args[1], args[3], args[4], args[5] / a**0.5], _tied_formula
    fn = torch.compile(formula) if compiled else formula
    if mode == "fwd":

        def call():
            with torch.no_grad():
                return fn(*args)

        return call
    args = [x.requires_grad_() for x in args]
    cot = torch.randn((b, m, d), generator=gen)

    def call_grad():
        out = fn(*args)
        return torch.autograd.grad((out * cot).sum(), args)

    return call_grad


def _measure(dims: dict, mode: str, compiled: bool, warmup: int, repeats: int, tied: bool = False) -> dict:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    call = _build(dims, mode, compiled, tied)
    t0 = time.perf_counter()
    call()  # compiles under torch.compile
    first_s = time.perf_counter() - t0
    touched = None
    if harness._reset_peak_rss():
        base = harness._read_status_kb("VmRSS")
        call()
        peak = harness._read_status_kb("VmHWM")
        touched = None if base is None or peak is None else (peak - base) * 1024
    times = harness.timed_calls(call, warmup, repeats)
    return {
        "compile_s": first_s,
        "touched_bytes": touched,
        "median_s": statistics.median(times),
        "times": times,
    }


def measure(dims: dict, mode: str, compiled: bool, *, warmup=3, repeats=10, timeout=900, tied=False) -> dict:
    """One torch case (eager or compiled, "fwd" or anything else = fwd+bwd) in a fresh process; same keys
    as the harness. tied: values = keys and no bias (benchmarks/attention.py), else benchmarks/cases.py's."""
    label = f"torch case {dims} {mode} compiled={compiled}"
    args = (dims, mode, compiled, warmup, repeats, tied)
    return harness.run_in_fresh_process(_measure, args, timeout=timeout, label=label)
