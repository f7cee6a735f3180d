"""The seeds block of ``<workdir>/summary.json``: each test metric per seed, its mean, std and 95% interval.

A run that trains K seeds (seed ``config.seed + i`` for replica i) writes, beside the usual top-level keys
of ``summary.json`` (``task``, ``stop_reason``, ``step``, ... and ``test_<name>``, which then hold the mean
over the seeds), one block under the key ``"seed_stats"`` (:data:`SEEDS_BLOCK`), the dict that
:func:`summarize_seeds` returns::

    "seed_stats": {
      "num_seeds": 3,                                   # K
      "seeds": [0, 1, 2],                               # each replica's seed, in replica order
      "per_seed": {"test_accuracy": [0.95, 0.97, 0.96], "test_loss": [...]},   # K values each
      "mean": {"test_accuracy": 0.96, ...},             # the mean over the K seeds
      "std": {"test_accuracy": 0.01, ...},              # the sample standard deviation (ddof=1)
      "ci95": {"test_accuracy": [0.9352, 0.9848], ...}  # the 95% Student-t interval [low, high]
    }

Every numeric test metric (an int or a float, not a bool) is in each of ``per_seed``, ``mean``, ``std``
and ``ci95``, under the same name as in the per-seed dicts given (``test_<name>``); other values (paths,
strings) are left out. The intervals are :func:`attn_jax.metrics.intervals.seed_interval`'s. The block is
strict JSON, never NaN: with K = 1 ``std`` and ``ci95`` are ``null`` for every metric (one seed has no
spread, so no interval); a metric that is NaN or infinite on some seed has that seed's value ``null`` in
``per_seed`` and ``null`` mean, std and interval.

A summary without the block (every run before K-seed training, and any run with K = 1 written by such a
loop) is read by :func:`read_seed_metrics` as K = 1 with the config's seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from attn_jax.metrics.intervals import seed_interval

SEEDS_BLOCK = "seed_stats"  # the key of the seeds block in summary.json
CONFIDENCE = 0.95  # the coverage of the block's "ci95" intervals


def _is_number(value) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    return numeric and not isinstance(value, (bool, np.bool_))


def _check_seeds(seeds, name: str = "seeds") -> list[int]:
    if not isinstance(seeds, Sequence) or isinstance(seeds, str) or not seeds:
        raise ValueError(f"{name} must be a non-empty list of ints, got {seeds!r}")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{name} must be a non-empty list of ints, got {list(seeds)!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name} must be distinct, got {list(seeds)!r}")
    return [int(s) for s in seeds]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summarize_seeds(per_seed: list[dict[str, float]], seeds: list[int]) -> dict:
    """The seeds block of ``summary.json``: every numeric test metric per seed, its mean, std and 95% CI.

    Args:
      per_seed: K dicts, the test metrics of each replica (``{"test_accuracy": 0.97, ...}``), in the order
        of ``seeds``. Every dict must hold the same numeric metrics; non-numeric values are left out.
      seeds: the K distinct seeds (ints) the replicas were trained with.

    Returns:
      ``{"num_seeds": K, "seeds": [...], "per_seed": {metric: [K values]}, "mean": {metric: m},
      "std": {metric: s}, "ci95": {metric: [low, high]}}``, strict JSON (the module docstring gives the
      schema): NaN never appears; ``std`` and ``ci95`` are None with K = 1, and a metric with a non-finite
      value on some seed has None for that value and for its mean, std and interval.

    Raises:
      ValueError: ``seeds`` is not a non-empty list of distinct ints, ``per_seed`` does not hold one dict
        per seed, or the seeds' dicts do not hold the same numeric metrics.

    Examples:
      >>> block = summarize_seeds([{"test_accuracy": 0.95}, {"test_accuracy": 0.97}], seeds=[0, 1])
      >>> block["num_seeds"], block["mean"], [round(x, 4) for x in block["ci95"]["test_accuracy"]]
      (2, {'test_accuracy': 0.96}, [0.8329, 1.0871])
      >>> summarize_seeds([{"test_accuracy": 0.95, "attention_png": "a.png"}], seeds=[0])["ci95"]
      {'test_accuracy': None}
    """
    seeds = _check_seeds(seeds)
    if not isinstance(per_seed, Sequence) or len(per_seed) != len(seeds):
        got = len(per_seed) if isinstance(per_seed, Sequence) else type(per_seed).__name__
        raise ValueError(f"per_seed must hold one dict per seed ({len(seeds)}), got {got}")
    for seed, metrics in zip(seeds, per_seed):
        if not isinstance(metrics, Mapping):
            raise ValueError(f"per_seed must hold dicts of metrics, got {metrics!r} for seed {seed}")
    names = [k for k, v in per_seed[0].items() if _is_number(v)]
    for seed, metrics in zip(seeds, per_seed):
        numeric = {k for k, v in metrics.items() if _is_number(v)}
        if numeric != set(names):
            raise ValueError(
                f"per_seed must hold the same numeric metrics for every seed: seed {seed} has "
                f"{sorted(numeric)}, seed {seeds[0]} has {sorted(names)}"
            )
    block = {"num_seeds": len(seeds), "seeds": seeds, "per_seed": {}, "mean": {}, "std": {}, "ci95": {}}
    for name in names:
        values = [float(metrics[name]) for metrics in per_seed]
        block["per_seed"][name] = [_finite_or_none(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            block["mean"][name] = block["std"][name] = block["ci95"][name] = None
            continue
        interval = seed_interval(values, CONFIDENCE)
        block["mean"][name] = interval.mean
        block["std"][name] = _finite_or_none(interval.std)
        block["ci95"][name] = [interval.low, interval.high] if len(values) > 1 else None
    return block


def read_seed_metrics(summary: Mapping, config_seed: int | None) -> tuple[list[int], dict[str, list]]:
    """The seeds and the per-seed test metrics of a run's ``summary.json``, with or without a seeds block.

    Args:
      summary: the parsed ``summary.json``.
      config_seed: the run's ``config.seed``: the one seed of a summary without a seeds block.

    Returns:
      ``(seeds, per_seed)``: the K seeds and ``{metric: [K values]}`` (a value is None where that seed's
      metric was not finite). Without a seeds block: ``([config_seed], {test_<name>: [value]})`` for every
      numeric ``test_<name>`` key.

    Raises:
      ValueError: the seeds block is malformed (seeds not distinct ints, a metric without one value per
        seed), or there is no block and ``config_seed`` is not an int.

    Examples:
      >>> read_seed_metrics({"task": "classification", "test_accuracy": 0.97}, config_seed=0)
      ([0], {'test_accuracy': [0.97]})
    """
    block = summary.get(SEEDS_BLOCK)
    if block is None:
        if not isinstance(config_seed, int) or isinstance(config_seed, bool):
            raise ValueError(f"config_seed must be an int for a summary without seeds, got {config_seed!r}")
        per_seed = {k: [float(v)] for k, v in summary.items() if k.startswith("test_") and _is_number(v)}
        return [config_seed], per_seed
    if not isinstance(block, Mapping) or not isinstance(block.get("per_seed"), Mapping):
        raise ValueError(
            f'summary["{SEEDS_BLOCK}"] must be a dict with "seeds" and "per_seed", got {block!r}'
        )
    seeds = _check_seeds(block.get("seeds"), f'summary["{SEEDS_BLOCK}"]["seeds"]')
    per_seed = {}
    for name, values in block["per_seed"].items():
        if (
            not isinstance(values, Sequence)
            or len(values) != len(seeds)
            or not all(v is None or _is_number(v) for v in values)
        ):
            raise ValueError(
                f'summary["{SEEDS_BLOCK}"]["per_seed"]["{name}"] must hold {len(seeds)} numbers (one per '
                f"seed), got {values!r}"
            )
        per_seed[name] = [None if v is None else float(v) for v in values]
    return seeds, per_seed
