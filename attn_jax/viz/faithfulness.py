"""Explanations of a classifier's decision as (B, H, W) maps, and how faithful each one is.

Explanations (each a (B, H, W) float32 map at the images' resolution, higher = more important):

- the family's own attention map: the last spatial map the model sows (`capture_attention`, upsampled
  bilinearly from the feature grid; query maps averaged over queries). Channel-only families (se, eca) and
  models without attention have none: `attention_map` returns None and the report says why.
- Grad-CAM (Selvaraju et al. 2017) at the last backbone conv (`attn_jax.viz.explain.grad_cam`).
- gradient x input (Shrikumar et al. 2016): d logit_target / d x times x, summed over channels (signed:
  pixels that raise the target logit rank first).
- integrated gradients (Sundararajan et al. 2017): (x - x') times the mean gradient along the straight path
  from the baseline x' to x at the midpoints alpha_k = (k + 1/2) / S, summed over channels; the S path
  points are vmapped, `chunk_size` at a time. Completeness: its sum over pixels approaches
  logit(x) - logit(x') as S grows (the midpoint rule's error falls as 1 / S^2).
- a random map (uniform, seeded) and the digit's ground-truth mask (an oracle, 1 on the digit's pixels,
  0 elsewhere), when the dataset has masks.

`score_maps` scores maps with attn_jax.metrics' deletion / insertion curves, Average Drop and Increase in
Confidence; `faithfulness_report` does it for a trained run and writes faithfulness.{md,json,png};
`python -m attn_jax.viz faithfulness --workdir RUN` is its command line.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.metrics import (
    average_drop,
    curve_auc,
    deletion_curve,
    increase_in_confidence,
    insertion_curve,
)
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.explain import grad_cam, last_conv

METHODS = ("attention", "grad_cam", "gradient_x_input", "integrated_gradients", "random", "oracle")
METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
TARGETS = ("predicted", "label")
_HEADERS = {
    "deletion_auc": "deletion AUC (lower better)",
    "insertion_auc": "insertion AUC (higher better)",
    "average_drop": "average drop % (lower better)",
    "increase_in_confidence": "increase in confidence (higher better)",
}


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_images_targets(predict, images, targets) -> None:
    if not callable(predict):
        raise ValueError(f"predict must be a callable images -> logits; got {type(predict).__name__}")
    if not hasattr(images, "shape") or images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {getattr(images, 'shape', None)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must have a floating dtype; got {images.dtype}")
    if not hasattr(targets, "shape") or tuple(targets.shape) != (images.shape[0],):
        raise ValueError(
            f"targets must be (B,) = ({images.shape[0]},); got shape {getattr(targets, 'shape', None)}"
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must have an integer dtype; got {targets.dtype}")


def _target_logit_sum(predict, images, targets):
    logits = predict(images)
    return jnp.sum(jnp.take_along_axis(logits.astype(jnp.float32), targets[:, None], axis=1))


# ------------------------------------------------------------------------------- gradient explanations


@functools.partial(jax.jit, static_argnums=(0,))
def _gradient_x_input(predict, images, targets):
    grads = jax.grad(_target_logit_sum, argnums=1)(predict, images, targets)
    return jnp.sum(grads.astype(jnp.float32) * images.astype(jnp.float32), axis=-1)


def gradient_x_input(predict: Callable, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Gradient x input: d logit_target / d x times x, summed over channels.

    Args:
      predict: images (B, H, W, C) -> logits (B, K); each image's logits must depend on that image only
        (e.g. a model applied with ``train=False``). Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: (B,) integer class of each image whose logit is explained.

    Returns:
      (B, H, W) float32 signed attributions.

    Raises:
      ValueError: images not (B, H, W, C) floating, targets not (B,) integer, predict not callable.

    Examples:
      >>> predict = lambda x: jnp.stack([x.sum(axis=(1, 2, 3)), 2 * x.sum(axis=(1, 2, 3))], axis=1)
      >>> gradient_x_input(predict, jnp.ones((1, 2, 2, 1)), jnp.array([1])).tolist()
      [[[2.0, 2.0], [2.0, 2.0]]]
    """
    _check_images_targets(predict, images, targets)
    return _gradient_x_input(predict, images, targets)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _integrated_gradients(predict, images, targets, baseline, steps, chunk_size):
    n_chunks = -(-steps // chunk_size)
    k = jnp.arange(n_chunks * chunk_size)
    alphas = ((k + 0.5) / steps).astype(images.dtype)
    weights = jnp.where(k < steps, 1.0 / steps, 0.0).astype(jnp.float32)
    grad_at = jax.vmap(jax.grad(_target_logit_sum, argnums=1), in_axes=(None, 0, None))
    delta = images - baseline

    def chunk(carry, ab):
        a, w = ab
        grads = grad_at(predict, baseline[None] + a[:, None, None, None, None] * delta[None], targets)
        return carry + jnp.einsum("n,nbhwc->bhwc", w, grads.astype(jnp.float32)), None

    zeros = jnp.zeros(images.shape, jnp.float32)
    shaped = (alphas.reshape(n_chunks, chunk_size), weights.reshape(n_chunks, chunk_size))
    mean_grad, _ = jax.lax.scan(chunk, zeros, shaped)
    return jnp.sum(mean_grad * delta.astype(jnp.float32), axis=-1)


def integrated_gradients(
    predict: Callable,
    images: jax.Array,
    targets: jax.Array,
    *,
    steps: int = 32,
    baseline: jax.Array | None = None,
    chunk_size: int = 8,
) -> jax.Array:
    """Integrated gradients (Sundararajan et al. 2017), the path's gradients vmapped, chunk by chunk.

    attribution = (x - x') * mean_k grad logit_target(x' + alpha_k (x - x')), alpha_k = (k + 1/2) / S
    (the midpoint rule), summed over channels. Completeness: the attributions' sum over pixels tends to
    logit_target(x) - logit_target(x') as S grows.

    Args:
      predict: images (N, H, W, C) -> logits (N, K), called on chunk_size * B images at a time; each
        image's logits must depend on that image only. Static under jit: reuse the same object.
      images: (B, H, W, C) floating.
      targets: (B,) integer classes.
      steps: S >= 1 points on the path.
      baseline: x', broadcastable to images (default zeros: the data set's mean for normalised images).
      chunk_size: path points evaluated side by side (memory: chunk_size * B images), >= 1.

    Returns:
      (B, H, W) float32 signed attributions.

    Raises:
      ValueError: bad images / targets, steps < 1, chunk_size < 1, or a baseline that does not broadcast.

    Examples:
      >>> predict = lambda x: jnp.stack([jnp.zeros(x.shape[0]), (x**2).sum(axis=(1, 2, 3))], axis=1)
      >>> ig = integrated_gradients(predict, jnp.full((1, 2, 2, 1), 3.0), jnp.array([1]), steps=4)
      >>> float(ig.sum())  # = f(x) - f(0) = 4 * 9 (the midpoint rule is exact for a quadratic)
      36.0
    """
    _check_images_targets(predict, images, targets)
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1; got {chunk_size!r}")
    if baseline is None:
        baseline = jnp.zeros_like(images)
    try:
        baseline = jnp.broadcast_to(jnp.asarray(baseline, images.dtype), images.shape)
    except (ValueError, TypeError):
        raise ValueError(
            f"baseline must broadcast to images {tuple(images.shape)}; got shape {jnp.shape(baseline)}"
        ) from None
    return _integrated_gradients(predict, images, targets, baseline, int(steps), min(int(chunk_size), steps))


# ----------------------------------------------------------------------------------- model explanations


def attention_map(model, variables: Mapping, images: jax.Array) -> tuple[jax.Array | None, str]:
    """The model's own attention map at image resolution: the last spatial (or query) map it sows.

    Args:
      model: a Flax classifier whose attention modules sow "attention_map" (called with ``train=False``).
      variables: its variables.
      images: (B, H, W, C).

    Returns:
      ``(maps, note)``: (B, H, W) float32 and the module path, or ``(None, reason)`` when the model sows
      no map with a spatial extent (channel attention such as se / eca, or no attention at all).
    """
    captured = capture_attention(model, variables, images, train=False)
    spatial = [(p, m) for p, m in captured.items() if m.image is not None]
    if spatial:
        path, amap = spatial[-1]
        return amap.image, f"{amap.kind} map sown by {path}"
    if captured:
        kinds = sorted({m.kind for m in captured.values()})
        return None, f"its attention is {'/'.join(kinds)}-only (no spatial map to score)"
    return None, "the model sows no attention map"


def explain_all(
    model,
    variables: Mapping,
    images: jax.Array,
    targets: jax.Array,
    *,
    predict: Callable | None = None,
    ig_steps: int = 32,
    key: jax.Array | None = None,
    digit: np.ndarray | None = None,
) -> tuple[dict[str, jax.Array], dict[str, str]]:
    """Every applicable explanation of `targets` on `images`, as (B, H, W) maps.

    Args:
      model: a Flax classifier (called with ``train=False``) whose backbone is under "backbone".
      variables: its variables.
      images: (B, H, W, C).
      targets: (B,) integer classes to explain.
      predict: images -> logits of this model (default: a new closure; pass one object for all batches
        to reuse the compiled programs).
      ig_steps: integrated gradients' path points.
      key: PRNG key of the random map (default key 0).
      digit: (B, H, W) bool ground-truth mask for the oracle, or None (no oracle).

    Returns:
      ``(maps, notes)``: method -> (B, H, W) float32 maps for each method of METHODS that applies, and
      method -> a note (what the attention map is, or why a method was left out).
    """
    predict = predict or functools.partial(_logits, model, variables)
    maps, notes = {}, {}
    amap, notes["attention"] = attention_map(model, variables, images)
    if amap is not None:
        maps["attention"] = amap
    layer = last_conv(model, variables, images, train=False)
    maps["grad_cam"] = grad_cam(model, variables, images, layer, class_index=targets, train=False)[0]
    notes["grad_cam"] = f"layer {layer}"
    maps["gradient_x_input"] = gradient_x_input(predict, images, targets)
    maps["integrated_gradients"] = integrated_gradients(predict, images, targets, steps=ig_steps)
    notes["integrated_gradients"] = f"{ig_steps} midpoint steps from a zero baseline"
    key = jax.random.key(0) if key is None else key
    maps["random"] = jax.random.uniform(key, images.shape[:3], jnp.float32)
    if digit is not None:
        maps["oracle"] = jnp.asarray(digit, jnp.float32)
        notes["oracle"] = "the digit's ground-truth mask"
    else:
        notes["oracle"] = "the dataset has no masks"
    return maps, notes


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, images):
    return model.apply(variables, images, train=False)


def score_maps(
    predict: Callable,
    images: jax.Array,
    maps: jax.Array,
    targets: jax.Array,
    *,
    steps: int = 64,
    chunk_size: int = 16,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
) -> dict[str, np.ndarray]:
    """Per-image faithfulness of maps: deletion / insertion curves and AUCs, Average Drop, Increase.

    By default deletion replaces pixels by zeros and insertion copies them onto the blurred image (sigma
    5 px), the defaults of attn_jax.metrics.

    Args:
      predict: images -> logits, as attn_jax.metrics takes it (reuse one object to compile once).
      images: (B, H, W, C).
      maps: (B, H, W).
      targets: (B,) integer classes whose probability is tracked.
      steps: S of the deletion and insertion curves.
      chunk_size: curve steps evaluated side by side.
      deletion_baseline: the deletion curve's baseline ("zero", "mean" or "blur").
      insertion_baseline: the insertion curve's baseline.

    Returns:
      NumPy arrays: deletion_curve, insertion_curve (B, S + 1); deletion_auc, insertion_auc,
      average_drop (percent), increase_in_confidence (0 or 1), each (B,).

    Raises:
      ValueError: as the metrics of attn_jax.metrics.
    """
    kw = {"steps": steps, "chunk_size": chunk_size}
    dele = deletion_curve(predict, images, maps, targets, baseline=deletion_baseline, **kw)
    ins = insertion_curve(predict, images, maps, targets, baseline=insertion_baseline, **kw)
    out = {
        "deletion_curve": dele,
        "insertion_curve": ins,
        "deletion_auc": curve_auc(dele),
        "insertion_auc": curve_auc(ins),
        "average_drop": average_drop(predict, images, maps, targets),
        "increase_in_confidence": increase_in_confidence(predict, images, maps, targets),
    }
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean and Student-t confidence interval (scipy.stats.t.interval) of per-image values.

    Args:
      values: 1-D per-image values.
      confidence: the interval's level.

    Returns:
      {"mean", "ci95": [lo, hi] (None for fewer than 2 values; [mean, mean] when all are equal), "n"}.

    Examples:
      >>> mean_ci([1.0, 2.0, 3.0])["ci95"]
      [-0.4841..., 4.4841...]
    """
    from scipy import stats

    x = np.asarray(values, np.float64).reshape(-1)
    mean = float(np.mean(x)) if x.size else float("nan")
    if x.size < 2:
        ci = None
    else:
        sem = float(stats.sem(x))
        interval = [mean, mean] if sem == 0 else stats.t.interval(confidence, x.size - 1, mean, sem)
        ci = [float(v) for v in interval]
    return {"mean": mean, "ci95": ci, "n": int(x.size)}


# ------------------------------------------------------------------------------------------- the report


def _batches(config, examples: int, batch_size: int):
    """(images, labels, digit mask or None) numpy batches of the run's test split, `examples` in all."""
    from attn_jax.data import get_adapter, make_pipeline
    from attn_jax.viz.runs import eval_batches

    data_dir = config.data.dir
    if "segmentation" in get_adapter(config.data.dataset).tasks:
        it = eval_batches(
            config.data.dataset, "test", batch_size=batch_size, limit=examples, data_dir=data_dir
        )
        for b in it:
            keep = np.asarray(b["valid"], bool)
            yield np.asarray(b["image"])[keep], np.asarray(b["label"])[keep], np.asarray(b["digit"])[keep]
        return
    loader = make_pipeline(config.data.dataset, "test", batch_size=batch_size, data_dir=data_dir,
                           num_devices=1, shard_index=0, shard_count=1)  # fmt: skip
    seen = 0
    for b in loader:
        keep = np.asarray(b["valid"], bool) & (np.arange(seen, seen + len(b["valid"])) < examples)
        yield np.asarray(b["image"])[keep], np.asarray(b["label"])[keep], None
        seen += len(b["valid"])
        if seen >= examples:
            return


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """x with its first axis zero-padded to n (one compiled shape for every batch)."""
    return x if len(x) == n else np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), x.dtype)])


def _fmt(stat: dict) -> str:
    if stat["ci95"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"


def markdown(report: dict) -> str:
    """The report's table: one row per method, mean [95% CI] per metric, then the left-out methods.

    Args:
      report: the dict `faithfulness_report` returns (and writes as faithfulness.json).

    Returns:
      Markdown text.
    """
    lines = [
        "| method | " + " | ".join(_HEADERS[m] for m in METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
    lines.append("")
    n = report["examples"]
    lines.append(
        f"{report['family']} on {report['dataset']} test, {n} images, target: {report['target']} class; "
        f"mean [95% t interval over images]; curves of {report['steps']} steps."
    )
    for name, note in report["notes"].items():
        lines.append(f"- {name}: {note}")
    return "\n".join(lines) + "\n"


def draw_curves(path: str, report: dict) -> str:
    """faithfulness.png: the mean deletion and insertion curves of each method, side by side.

    Args:
      path: the PNG to write.
      report: the dict `faithfulness_report` returns.

    Returns:
      path.
    """
    from attn_jax.viz.draw import plt  # the Agg backend is set there

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for name, row in report["methods"].items():
            curve = np.asarray(row[f"{kind}_curve"])
            x = np.linspace(0.0, 1.0, len(curve))
            ax.plot(x, curve, label=f"{name} (AUC {row[f'{kind}_auc']['mean']:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the target class")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(kind)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['family']} ({report['dataset']}, {report['examples']} test images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def faithfulness_report(
    workdir: str,
    *,
    examples: int = 64,
    steps: int = 32,
    ig_steps: int = 32,
    out: str | None = None,
    target: str = "predicted",
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Score a trained classification run's test images with every applicable explanation.

    Loads the run (config.json and its latest verified checkpoint, read-only), explains the target class
    of the first `examples` test images with each method of METHODS that applies and scores the maps with
    deletion AUC (zero baseline), insertion AUC (blurred baseline), Average Drop and Increase in
    Confidence; writes OUT/faithfulness.md, OUT/faithfulness.json and OUT/faithfulness.png.

    Args:
      workdir: an `attn-jax train` classification run.
      examples: test images to score, >= 1.
      steps: S of the deletion / insertion curves, >= 1.
      ig_steps: integrated gradients' path points, >= 1.
      out: output directory (default workdir).
      target: "predicted" (the model's class, as in RISE) or "label" (the true class).
      batch_size: images explained and scored at a time, >= 1.
      seed: the random map's seed.

    Returns:
      The report written as faithfulness.json, with "paths" added.

    Raises:
      ValueError: a bad argument (one line), or a run of another task than classification.
      FileNotFoundError: no run in workdir.
    """
    for name, value in (("examples", examples), ("steps", steps), ("ig_steps", ig_steps),
                        ("batch_size", batch_size)):  # fmt: skip
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"no run in {workdir!r} (config.json missing)")
    from attn_jax.viz.runs import load_run

    model, variables, config = load_run(workdir)
    if config.task != "classification":
        raise ValueError(f"faithfulness scores classification runs; {workdir!r} is a {config.task} run")
    out = out or workdir
    os.makedirs(out, exist_ok=True)
    predict = functools.partial(_logits, model, variables)
    bs = min(batch_size, examples)
    key = jax.random.key(seed)
    per_image: dict[str, dict[str, list]] = {}
    notes: dict[str, str] = {}
    correct = seen = 0
    for i, (images, labels, digit) in enumerate(_batches(config, examples, bs)):
        n = len(images)
        if n == 0:
            continue
        images_p = jnp.asarray(_pad(images, bs))
        logits = np.asarray(predict(images_p))[:n]
        correct += int(np.sum(np.argmax(logits, -1) == labels))
        seen += n
        targets = np.argmax(logits, -1) if target == "predicted" else labels
        targets_p = jnp.asarray(_pad(targets.astype(np.int32), bs))
        digit_p = None if digit is None else _pad(digit, bs)
        maps, notes = explain_all(model, variables, images_p, targets_p, predict=predict, ig_steps=ig_steps,
                                  key=jax.random.fold_in(key, i), digit=digit_p)  # fmt: skip
        for name, m in maps.items():
            scores = score_maps(predict, images_p, m, targets_p, steps=steps)
            rows = per_image.setdefault(name, {})
            for metric, values in scores.items():
                rows.setdefault(metric, []).append(values[:n])
    if seen == 0:
        raise ValueError(f"the test split of {config.data.dataset!r} has no images")
    methods = {}
    for name in METHODS:
        if name not in per_image:
            continue
        values = {k: np.concatenate(v) for k, v in per_image[name].items()}
        row = {m: mean_ci(values[m]) for m in METRICS}
        row["deletion_curve"] = values["deletion_curve"].mean(0).tolist()
        row["insertion_curve"] = values["insertion_curve"].mean(0).tolist()
        methods[name] = row
    report = {
        "meta": {
            "command": f"python -m attn_jax.viz faithfulness --workdir {workdir} --examples {examples} "
            f"--steps {steps} --ig-steps {ig_steps} --target {target} --seed {seed}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
            f"{os.cpu_count()} CPUs, jax {jax.default_backend()}",
        },
        "run": os.path.abspath(workdir),
        "family": config.model.attention,
        "dataset": config.data.dataset,
        "examples": seen,
        "accuracy": correct / seen,
        "target": target,
        "steps": steps,
        "ig_steps": ig_steps,
        "seed": seed,
        "baselines": {"deletion": "zero", "insertion": "blur (sigma 5 px)"},
        "notes": notes,
        "methods": methods,
    }
    paths = {ext: os.path.join(out, f"faithfulness.{ext}") for ext in ("md", "json", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
    draw_curves(paths["png"], report)
    return {**report, "paths": paths}


# ------------------------------------------------------------------------------------ the command line


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        raise _ArgumentError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m attn_jax.viz faithfulness",
        description="Score a trained classification run's explanations: deletion / insertion AUC, "
        "Average Drop, Increase in Confidence (faithfulness.{md,json,png}).",
    )
    p.add_argument("--workdir", required=True, help="an `attn-jax train` classification run")
    p.add_argument("--examples", type=int, default=64, help="test images to score (default 64)")
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion / insertion curves")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' path points")
    p.add_argument("--target", default="predicted", help="class explained and tracked: predicted | label")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the random map")
    p.add_argument("--out", default=None, help="output directory (default: the workdir)")
    return p


def main(argv=None) -> dict:
    """`python -m attn_jax.viz faithfulness --workdir RUN [--examples N] [--steps S] [--out DIR]`.

    Bad arguments (or a missing run) print one line and exit with status 2.
    """
    try:
        args = _parser().parse_args(argv)
        if not os.path.isdir(args.workdir):
            raise _ArgumentError(f"--workdir {args.workdir!r} is not a directory")
        if not os.path.isfile(os.path.join(args.workdir, "config.json")):
            raise _ArgumentError(f"--workdir {args.workdir!r} holds no run (config.json missing)")
        for name in ("examples", "steps", "ig_steps", "batch_size"):
            if getattr(args, name) < 1:
                raise _ArgumentError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
        if args.target not in TARGETS:
            raise _ArgumentError(f"--target must be one of {', '.join(TARGETS)}; got {args.target!r}")
    except _ArgumentError as e:
        print(f"python -m attn_jax.viz faithfulness: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = faithfulness_report(
        args.workdir, examples=args.examples, steps=args.steps, ig_steps=args.ig_steps, out=args.out,
        target=args.target, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    print(markdown(report), end="")
    print(f"wrote {', '.join(report['paths'].values())}")
    return report
