"""`train_and_evaluate(config, workdir)`: the classification training loop with eval, checkpoints, metrics.

data -> model -> step (shard_map over the mesh, or pmap) -> metrics / checkpoints. Resumes automatically
from the latest finalised checkpoint in <workdir>/checkpoints; SIGTERM saves and returns cleanly; a
non-finite loss or parameter stops with NonFiniteLossError and no checkpoint of the bad state.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.data import dataset_info, make_pipeline
from attn_jax.train import checkpoint as ckpt
from attn_jax.train import parallel
from attn_jax.train.distributed import configure_cpu_devices, maybe_initialize
from attn_jax.train.factory import build_model, build_optimizer
from attn_jax.train.preemption import SigtermFlag
from attn_jax.train.state import abstract_train_state, create_train_state
from attn_jax.train.step import eval_step, train_step
from attn_jax.train.writers import MetricWriter, progress_bar, reduce_sums
from attn_jax.viz import attention_grid, capture_attention


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or parameters; the last good checkpoint is left as it was."""


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


class _Runner:
    """Compiled train / eval steps and host <-> device placement for one parallel mode."""

    def __init__(self, config, model, tx, mesh):
        self.mesh, self.mode = mesh, config.get("parallel", "shard_map")
        step_fn = functools.partial(train_step, model=model, tx=tx, label_smoothing=config.label_smoothing)
        eval_fn = functools.partial(eval_step, model=model)
        if self.mode == "shard_map":
            self.train = parallel.shard_map_step(step_fn, mesh)
            self.eval = parallel.shard_map_eval(eval_fn, mesh)
        elif self.mode == "pmap":
            if jax.process_count() > 1 or mesh.size != jax.local_device_count():
                raise ValueError("parallel='pmap' runs on all local devices of one process; use 'shard_map'")
            self.train = parallel.pmap_step(step_fn)
            self.eval = jax.pmap(eval_fn, axis_name="data", in_axes=(None, 0), out_axes=None)
        else:
            raise ValueError(f"parallel must be 'shard_map' or 'pmap', got {self.mode!r}")

    def batch(self, batch):
        if self.mode == "pmap":
            return parallel.split_for_pmap(batch, self.mesh.size)
        return parallel.shard_batch(batch, self.mesh)

    def place(self, state):
        return parallel.replicate(state, self.mesh) if self.mode == "shard_map" else state


def _summarize(pending: list) -> dict:
    """Step metrics since the last check -> host means (sums added, norms of the last step)."""
    host = jax.device_get(pending)
    sums = {k: sum(float(m[k]) for m in host) for k in ("loss", "correct", "count")}
    out = reduce_sums(sums)
    out.update(grad_norm=float(host[-1]["grad_norm"]), param_norm=float(host[-1]["param_norm"]))
    return out


def _check_finite(metrics: dict, step: int, manager) -> None:
    if all(math.isfinite(metrics[k]) for k in ("loss", "param_norm")):
        return
    manager.wait_until_finished()
    good = manager.latest_step()
    raise NonFiniteLossError(
        f"non-finite training loss or parameters by step {step} (loss={metrics['loss']}, "
        f"param_norm={metrics['param_norm']}); stopped without saving. Last good checkpoint: "
        f"{'none' if good is None else f'step {good}'} in {manager.directory}. Lower config.lr, set "
        f"config.clip_norm, or config.skip_nonfinite > 0."
    )


def evaluate(runner: _Runner, state, config, split: str = "test") -> dict:
    """Mean loss and accuracy over the whole `split` (one ordered epoch, padding excluded)."""
    loader = make_pipeline(
        config.dataset,
        split,
        batch_size=config.eval_batch_size,
        train=False,
        data_dir=config.data_dir,
        num_devices=runner.mesh.size,
    )
    total = None
    for batch in loader:
        sums = runner.eval(state, runner.batch(batch))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return reduce_sums(jax.device_get(total))


def _init_state(config, model, tx, meta, runner, manager, iterator):
    sample = jnp.zeros((2, *meta.image_shape), jnp.float32)
    abstract = abstract_train_state(model, tx, sample)
    sharding = jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec())
    state, step = ckpt.restore_latest(manager, ckpt.with_shardings(abstract, sharding), iterator)
    if state is None:
        state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), sample)
        return runner.place(state), 0
    print(f"resumed from checkpoint step {step} in {manager.directory}", flush=True)
    return (state if runner.mode == "shard_map" else jax.device_get(state)), int(step)


def _train(config, runner, state, start, iterator, manager, writer, sigterm):
    """Steps start..num_train_steps; returns (state, last eval metrics, stop reason)."""
    total, pending, last_eval = config.num_train_steps, [], None
    bar = progress_bar(total, start, config.get("progress", True))
    every = lambda n, s: (n and s % n == 0) or s == total  # noqa: E731
    # A SIGTERM may reach only some processes: they agree every `preemption_check_every_steps` steps (a
    # tiny all-gather; every step with one process), then all save the same step and stop together.
    check_every = 1 if jax.process_count() == 1 else config.get("preemption_check_every_steps", 10)
    stop = False
    for step in range(start + 1, total + 1):
        state, metrics = runner.train(state, runner.batch(next(iterator)))
        pending.append(metrics)
        bar.update(1)
        if step % check_every == 0 or step == total:
            stop = any_process(sigterm.requested)
        save_now = every(config.checkpoint_every_steps, step) or stop
        is_eval = every(config.eval_every_steps, step)
        if every(config.log_every_steps, step) or save_now or is_eval:
            train_metrics = _summarize(pending)
            pending = []
            _check_finite(train_metrics, step, manager)
            writer.write(step, "train", train_metrics)
            bar.set_postfix(loss=f"{train_metrics['loss']:.4f}", acc=f"{train_metrics['accuracy']:.3f}")
        if is_eval:
            last_eval = evaluate(runner, state, config)
            writer.write(step, "test", last_eval)
            bar.write(f"step {step}: test accuracy {last_eval['accuracy']:.4f} loss {last_eval['loss']:.4f}")
        if save_now:
            ckpt.save(manager, step, state, iterator, metrics=last_eval if is_eval else None)
        if stop:
            bar.close()
            return state, last_eval, "sigterm"
    bar.close()
    return state, last_eval, "done"


def _write_png(config, model, state, workdir, meta) -> str | None:
    n = config.get("png_examples", 8)
    if not n or jax.process_index() != 0:
        return None
    batch = next(
        iter(
            make_pipeline(
                config.dataset,
                "test",
                batch_size=n,
                train=False,
                data_dir=config.data_dir,
                shard_index=0,
                shard_count=1,
                num_devices=1,
            )
        )
    )
    host = jax.device_get(state)
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    # running BatchNorm statistics (train=False): no collectives, so a plain apply on one host is fine
    maps, logits = capture_attention(model, variables, batch["image"], with_output=True, train=False)
    columns = {path: amap.image for path, amap in maps.items()} or {"no attention map sown": None}
    pairs = [f"{y}/{p}" for y, p in zip(batch["label"], np.argmax(logits, -1))]
    pairs = "\n".join(" ".join(pairs[i : i + 4]) for i in range(0, len(pairs), 4))  # fits a 2-column grid
    path = os.path.join(workdir, "attention_maps.png")
    return attention_grid(
        path, batch["image"], columns, title=f"{config.model.attention}, label/prediction:\n{pairs}"
    )


def _export_viz_run(config, state, workdir, meta) -> str | None:
    """Save the trained SmallCNN classifier as a viz run (<workdir>/viz/<attention>/), so that
    `attn-jax visualize --workdir <workdir>/viz` draws and scores it; None for other models."""
    m = config.model
    if (
        jax.process_index() != 0
        or m.backbone != "small_cnn"
        or m.blocks_per_stage != 1
        or m.dtype != "float32"
    ):
        return None
    from attn_jax.viz.runs import save_run

    host = jax.device_get(state)
    variables = {"params": host.params, **({"batch_stats": host.batch_stats} if host.batch_stats else {})}
    viz_config = {"family": m.attention, "widths": list(m.features), "stride": m.stride,
                  "num_classes": meta.num_classes, "image_shape": list(meta.image_shape)}  # fmt: skip
    return save_run(os.path.join(workdir, "viz", m.attention), variables, viz_config)


def _setup(config, model):
    """Devices, dataset facts, model, optimizer and compiled steps of `config` -> (meta, mesh, model, tx,
    runner). CPU devices and multi-host start-up come first: both must precede any JAX operation."""
    configure_cpu_devices(config.get("cpu_devices", 0))
    maybe_initialize(config.get("coordinator") or None)
    meta = dataset_info(config.dataset, task="classification", data_dir=config.data_dir)
    mesh = parallel.make_mesh(config.num_devices or None)
    model = model or build_model(config.model, meta.num_classes)
    tx = build_optimizer(config)
    return meta, mesh, model, tx, _Runner(config, model, tx, mesh)


def train_and_evaluate(config, workdir: str, *, model=None) -> dict:
    """Train the classifier of `config` on its dataset, evaluating and checkpointing in `workdir`.

    Returns the summary also written to <workdir>/summary.json: final test accuracy and loss, steps,
    wall time, stop reason ("done" or "sigterm"). `model` overrides the config's model (tests, notebooks);
    its BatchNorm must average over the axis "data" for exact data parallelism.
    """
    t0, explicit_model = time.time(), model
    meta, mesh, model, tx, runner = _setup(config, model)
    iterator = iter(
        make_pipeline(
            config.dataset,
            "train",
            batch_size=config.batch_size,
            train=True,
            seed=config.seed,
            data_dir=config.data_dir,
            num_devices=mesh.size,
            augment=config.get("augment"),
        )
    )
    os.makedirs(workdir, exist_ok=True)
    manager = ckpt.make_manager(
        os.path.join(workdir, "checkpoints"),
        keep_latest=config.keep_latest,
        keep_best=config.keep_best,
        async_save=config.get("async_checkpoints", True),
    )
    writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
    try:
        state, start = _init_state(config, model, tx, meta, runner, manager, iterator)
        with SigtermFlag() as sigterm:
            state, last_eval, reason = _train(
                config, runner, state, start, iterator, manager, writer, sigterm
            )
        manager.wait_until_finished()
    finally:
        writer.close()
        manager.close()
    summary = {
        "workdir": os.path.abspath(workdir),
        "stop_reason": reason,
        "step": int(jax.device_get(state.step)),
        "resumed_from": start,
        "wall_time_s": round(time.time() - t0, 2),
        "devices": mesh.size,
        "processes": jax.process_count(),
        "attention": config.model.get("attention"),
    }
    if reason == "done":
        summary.update({f"test_{k}": v for k, v in (last_eval or evaluate(runner, state, config)).items()})
        summary["attention_png"] = _write_png(config, model, state, workdir, meta)
        if explicit_model is None and config.get("export_viz", True):
            summary["viz_run"] = _export_viz_run(config, state, workdir, meta)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def evaluate_checkpoint(config, workdir: str, *, model=None, split: str = "test") -> dict:
    """Test metrics of the latest readable checkpoint in <workdir>/checkpoints (any device count)."""
    meta, mesh, model, tx, runner = _setup(config, model)
    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), async_save=False, read_only=True)
    try:
        state, step = _init_state(config, model, tx, meta, runner, manager, None)
    finally:
        manager.close()
    if step == 0:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    return {"step": step, "split": split, **evaluate(runner, state, config, split)}
