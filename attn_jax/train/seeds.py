"""K training seeds in one compiled program: the train state stacked on a leading seed axis, the step
vmapped (``mode="vmap"``) or unrolled, one copy of the single-seed step per replica (``mode="unroll"``).

    seeds = replica_seeds(config)     # [config.seed, config.seed + 1, ...], config.num_seeds long
    step = over_seeds(step_fn, mode)  # (states (K, ...), batches (b, K, ...)) -> (states, metrics (K,))
    batches = SeedBatches([iter(pipeline(s)) for s in seeds])   # next(): each entry (b, K, ...)

Replica i is the run of seed ``config.seed + i``: its initialisation, data order and augmentation are that
seed's, and the vmapped step computes exactly what the single-seed step computes (BatchNorm statistics,
dropout keys and collectives stay per replica), so replica i equals the single-seed run up to float rounding.
The two modes compute the same values: "vmap" turns the K replicas' convolutions into one batched
(grouped) convolution and compiles one step; "unroll" puts K independent copies of the single-seed step in
the program (K times the compilation), which XLA may schedule side by side. Which is faster depends on
the backend (benchmarks/seeds_cost.py measures both). A loop over the replicas (``jax.lax.map``) was
measured too and dropped: on XLA:CPU its step took 10.3 s for K = 4 against 0.44 s vmapped.
The seed axis of a batch is axis 1, after the example axis, so the data-parallel placement (shard_map or
pmap, both splitting axis 0) is the same for one seed or many.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np


def replica_seeds(config) -> list[int]:
    """The seeds of a config's replicas: ``config.seed + i`` for ``i < config.num_seeds``.

    Args:
      config: an experiment config (``seed``, ``num_seeds``).

    Returns:
      A list of ``config.num_seeds`` ints.

    Raises:
      ValueError: ``num_seeds`` is not an integer >= 1.

    Examples:
      >>> import ml_collections
      >>> replica_seeds(ml_collections.ConfigDict({"seed": 3, "num_seeds": 4}))
      [3, 4, 5, 6]
    """
    k = config.num_seeds
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"num_seeds must be an integer >= 1, got {k!r}")
    return [int(config.seed) + i for i in range(int(k))]


def _stack(outputs: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def _over_seeds_unroll(step_fn):
    def step(states, batches):
        k = jax.tree.leaves(states)[0].shape[0]
        outputs = [
            step_fn(take_replica(states, i), jax.tree.map(lambda x, i=i: x[:, i], batches)) for i in range(k)
        ]
        return _stack(outputs)

    return step


def _eval_over_seeds_unroll(eval_fn):
    def evaluate(states, batch):
        k = jax.tree.leaves(states)[0].shape[0]
        sums, per_example = _stack([eval_fn(take_replica(states, i), batch) for i in range(k)])
        return sums, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_example)

    return evaluate


#: seeds_mode -> (train step over seeds, eval step over seeds)
SEED_MAPS = {
    "vmap": (
        lambda step_fn: jax.vmap(step_fn, in_axes=(0, 1), out_axes=(0, 0)),
        lambda eval_fn: jax.vmap(eval_fn, in_axes=(0, None), out_axes=(0, 1)),
    ),
    "unroll": (_over_seeds_unroll, _eval_over_seeds_unroll),
}


SEEDS_MODES = ("auto", *SEED_MAPS)


def resolve_seeds_mode(mode: str, backend: str, num_devices: int) -> str:
    """The mode a K-seed run uses: ``mode`` itself, or for ``"auto"`` the one measured faster where it was
    measured. On a CPU with one device "unroll" (benchmarks/seeds_cost.py: 1.16x the separate runs'
    images/s per seed at K = 4 and 1.31x at K = 8 idle, where "vmap" gave 0.76x and 0.74x); elsewhere
    "vmap", which compiles once and issues one collective per step for all replicas (not measured on
    GPU or TPU).

    Args:
      mode: a config's ``seeds_mode``, one of SEEDS_MODES.
      backend: ``jax.default_backend()``.
      num_devices: the devices the step runs on.

    Returns:
      ``"vmap"`` or ``"unroll"``.

    Raises:
      ValueError: an unknown ``mode``.

    Examples:
      >>> resolve_seeds_mode("auto", "cpu", 1), resolve_seeds_mode("auto", "gpu", 1)
      ('unroll', 'vmap')
      >>> resolve_seeds_mode("vmap", "cpu", 1)
      'vmap'
    """
    if mode not in SEEDS_MODES:
        raise ValueError(f"seeds_mode must be one of {SEEDS_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "unroll" if backend == "cpu" and num_devices == 1 else "vmap"


def _check_mode(mode: str) -> None:
    if mode not in SEED_MAPS:
        raise ValueError(f"seeds_mode must be one of {tuple(SEED_MAPS)}, got {mode!r}")


def over_seeds(step_fn, mode: str = "vmap"):
    """A per-device train step over K stacked replicas.

    Args:
      step_fn: ``step_fn(state, batch) -> (state, metrics)`` for one replica (e.g. a bound
        :func:`attn_jax.train.train_step`); its collectives over the device axis stay per replica.
      mode: ``"vmap"``: ``jax.vmap`` of ``step_fn`` over the state's axis 0 and the batch's axis 1;
        ``"unroll"``: ``step_fn`` applied to each replica's slices (traced K times), outputs stacked.

    Returns:
      ``(states, batches) -> (states, metrics)`` with every state leaf ``(K, ...)``, every batch entry
      ``(b, K, ...)`` and every metric ``(K, ...)``.

    Raises:
      ValueError: an unknown ``mode``.

    Examples:
      >>> import jax.numpy as jnp
      >>> step = lambda state, batch: (state + batch.sum(), {"loss": batch.mean()})
      >>> states, batches = jnp.zeros(3), jnp.ones((4, 3))  # K = 3 replicas, 4 examples each
      >>> new, metrics = over_seeds(step, "unroll")(states, batches)
      >>> new.tolist(), metrics["loss"].shape
      ([4.0, 4.0, 4.0], (3,))
    """
    _check_mode(mode)
    return SEED_MAPS[mode][0](step_fn)


def eval_over_seeds(eval_fn, mode: str = "vmap"):
    """A per-device eval step of K stacked replicas on one shared batch.

    Args:
      eval_fn: ``eval_fn(state, batch) -> (sums, per_example)`` for one replica.
      mode: ``"vmap"`` or ``"unroll"``, as in :func:`over_seeds`.

    Returns:
      ``(states, batch) -> (sums, per_example)`` with sums ``(K, ...)`` and per-example outputs
      ``(b, K, ...)`` (the example axis first, so the data-parallel placement gathers them as before).

    Raises:
      ValueError: an unknown ``mode``.
    """
    _check_mode(mode)
    return SEED_MAPS[mode][1](eval_fn)


def stack_states(states: list):
    """K host pytrees of equal structure stacked on a new leading axis (NumPy)."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


def take_replica(tree, index: int):
    """Replica ``index`` of a stacked pytree (every leaf's axis 0)."""
    return jax.tree.map(lambda x: x[index], tree)


class SeedBatches:
    """One batch of each replica's data iterator per step, stacked on axis 1: entry ``(b, K, ...)``.

    Its state (for a checkpoint) is every iterator's state, so a resumed run continues each replica's data
    order where it stopped. The iterators are grain loaders (``get_state() -> bytes``).

    Args:
      iterators: one data iterator per replica, in replica order.
    """

    def __init__(self, iterators):
        self.iterators = list(iterators)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(it) for it in self.iterators]
        return {key: np.stack([np.asarray(b[key]) for b in batches], axis=1) for key in batches[0]}

    def get_state(self) -> bytes:
        """Every replica iterator's state, as one JSON list (bytes)."""
        return json.dumps([_text(it.get_state()) for it in self.iterators]).encode()

    def set_state(self, state: bytes) -> None:
        """Move every replica iterator to the position :meth:`get_state` recorded."""
        states = json.loads(_text(state))
        if len(states) != len(self.iterators):
            raise ValueError(
                f"a data state of {len(states)} seeds cannot restore {len(self.iterators)} seeds"
            )
        for it, s in zip(self.iterators, states, strict=True):
            it.set_state(s.encode())

    def start_prefetch(self) -> None:
        """Start every replica iterator's prefetching (grain calls this after a restore)."""
        for it in self.iterators:
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def _text(state) -> str:
    return state.decode() if isinstance(state, bytes) else state


def seed_metrics(per_seed: list[dict], seeds: list[int]) -> dict:
    """K replicas' metric dicts as one flat dict: each scalar metric's mean over replicas under its own name,
    and every replica's values under ``seed<s>/<name>`` (lists such as per-class IoU included).

    Args:
      per_seed: one metric dict per replica, in replica order.
      seeds: the replicas' seeds.

    Returns:
      The flat dict (JSON-friendly values).

    Examples:
      >>> seed_metrics([{"accuracy": 0.5}, {"accuracy": 0.75}], [0, 1])
      {'accuracy': 0.625, 'seed0/accuracy': 0.5, 'seed1/accuracy': 0.75}
    """
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = {}
    for name, value in per_seed[0].items():
        if np.ndim(value) == 0:
            out[name] = float(np.mean([float(m[name]) for m in per_seed]))
    for seed, metrics in zip(seeds, per_seed, strict=True):
        out.update({f"seed{seed}/{name}": value for name, value in metrics.items()})
    return out


def split_seeds(metrics: dict, seeds: list[int]) -> list[dict]:
    """The inverse of :func:`seed_metrics`: one metric dict per replica, from the ``seed<s>/<name>`` keys.

    Examples:
      >>> split_seeds({"accuracy": 0.625, "seed0/accuracy": 0.5, "seed1/accuracy": 0.75}, [0, 1])
      [{'accuracy': 0.5}, {'accuracy': 0.75}]
    """
    if len(seeds) == 1:
        return [dict(metrics)]
    out = []
    for seed in seeds:
        prefix = f"seed{seed}/"
        out.append({k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)})
    return out
