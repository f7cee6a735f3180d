"""Deletion curves in one compiled program against a Python loop over images and steps: images/s.

    python benchmarks/faithfulness.py            # B=32 images 32x32x1, S=64 steps, a small CNN, ~1 min
    python benchmarks/faithfulness.py --quick    # B=4, S=8: a smoke run

The classifier is a small CNN written with jnp / lax ops (conv 3x3 16 -> conv 3x3 stride 2 32 -> mean pool
-> dense 10, fixed random weights), so no model code is involved. Variants:

- "loop, per image and step": what a PyTorch-style implementation does: for each image, for each step,
  perturb the image on the host (NumPy, the same order and pixel counts) and call the jitted classifier
  on that one image; the label's probability is read back each time.
- "loop, per step (B images a call)": the same loop with the batch kept together at each step.
- "deletion_curve, chunk_size=k": `attn_jax.metrics.faithfulness.deletion_curve`, all S + 1 steps of all
  B images in one compiled call, k steps side by side (lax.map over the chunks).

Every variant's curves are checked equal to the per-image loop's (atol 1e-5) before any timing. Variants
are interleaved over `--rounds` (the machine is shared): the table gives the median wall time per batch
and images/s = B / median. Writes benchmarks/results/cpu/faithfulness.json (environment with the load
average before and after, platform and CPU model).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

NUM_CLASSES = 10


def make_predict(channels: int, seed: int = 0):
    """A jitted small CNN: images (N, H, W, channels) -> logits (N, 10), jnp / lax ops only."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    rng = np.random.default_rng(seed)
    k1 = jnp.asarray(rng.normal(size=(3, 3, channels, 16)) / np.sqrt(9 * channels), jnp.float32)
    k2 = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) / np.sqrt(9 * 16), jnp.float32)
    dense = jnp.asarray(rng.normal(size=(32, NUM_CLASSES)) * 2.0, jnp.float32)
    dims = ("NHWC", "HWIO", "NHWC")

    def predict(x):
        x = jax.nn.relu(lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dims))
        x = jax.nn.relu(lax.conv_general_dilated(x, k2, (2, 2), "SAME", dimension_numbers=dims))
        return jnp.mean(x, axis=(1, 2)) @ dense

    return jax.jit(predict)


def inputs(batch: int, size: int, channels: int, seed: int = 1):
    """Random images, smooth random saliency maps with ties (quantised), and labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(batch, size, size, channels)).astype(np.float32)
    maps = np.round(rng.normal(size=(batch, size, size)) * 4.0).astype(np.float32)  # ties
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    return images, maps, labels


def _prob(logits, labels):
    import numpy as np

    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return p[np.arange(len(labels)), labels]


def loop_per_image(predict, images, maps, labels, steps):
    """(B, S + 1) deletion curves (zero baseline): one predict call per image and step."""
    import numpy as np

    from attn_jax.metrics.faithfulness import step_counts

    b, h, w, _ = images.shape
    counts = step_counts(steps, h * w)
    out = np.zeros((b, steps + 1))
    for i in range(b):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for s, k in enumerate(counts):
            x = images[i].copy().reshape(h * w, -1)
            x[order[:k]] = 0.0
            out[i, s] = _prob(predict(x.reshape(1, h, w, -1)), labels[i : i + 1])[0]
    return out


def loop_per_step(predict, images, maps, labels, steps):
    """(B, S + 1) deletion curves (zero baseline): one predict call per step on all B images."""
    import numpy as np

    from attn_jax.metrics.faithfulness import step_counts

    b, h, w, _ = images.shape
    counts = step_counts(steps, h * w)
    order = np.argsort(-maps.reshape(b, -1), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(h * w)[None], axis=1)
    out = np.zeros((b, steps + 1))
    for s, k in enumerate(counts):
        x = np.where((ranks < k).reshape(b, h, w, 1), 0.0, images).astype(np.float32)
        out[:, s] = _prob(predict(x), labels)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 16, 65])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="B=4, S=8, chunks 3 and 9, 1 round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu" / "faithfulness.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.chunks, args.rounds = 4, 8, [3, 9], 1
    import jax
    import numpy as np

    from attn_jax.metrics.faithfulness import deletion_curve

    load_before = os.getloadavg()
    predict = make_predict(args.channels)
    images, maps, labels = inputs(args.batch, args.size, args.channels)
    variants = {
        "loop, per image and step": lambda: loop_per_image(predict, images, maps, labels, args.steps),
        "loop, per step (B images a call)": lambda: loop_per_step(predict, images, maps, labels, args.steps),
    }
    compile_s = {}
    for k in args.chunks:
        name = f"deletion_curve, chunk_size={k}"
        call = lambda k=k: np.asarray(
            jax.block_until_ready(
                deletion_curve(predict, images, maps, labels, steps=args.steps, baseline="zero", chunk_size=k)
            )
        )
        start = time.perf_counter()
        call()  # compile (and one run)
        compile_s[name] = time.perf_counter() - start
        variants[name] = call
    reference = variants["loop, per image and step"]()  # also compiles predict for one image
    max_err = {}
    for name, call in variants.items():
        got = call()
        np.testing.assert_allclose(got, reference, atol=1e-5, err_msg=name)
        max_err[name] = float(np.max(np.abs(got - reference)))
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, call in variants.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["loop, per image and step"])
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append(
            dict(
                variant=name,
                median_s=med,
                images_per_s=args.batch / med,
                x_loop=base / med,
                max_abs_diff=max_err[name],
                first_call_s=compile_s.get(name),
                round_s=t,
            )
        )
    load_after = os.getloadavg()
    print(
        f"\n### deletion curves, B={args.batch} images {args.size}x{args.size}x{args.channels}, "
        f"S={args.steps} steps, small CNN (load average before {load_before}, after {load_after})\n"
    )
    harness.print_table(
        rows,
        [
            ("variant", "variant", ""),
            ("median_s", "median s / batch", ".3f"),
            ("images_per_s", "images/s", ".1f"),
            ("x_loop", "x per-image loop", ".1f"),
            ("first_call_s", "first call s", ".2f"),
            ("max_abs_diff", "max abs diff", ".1e"),
        ],
    )
    extra = {
        "quick": args.quick,
        "shape": dict(batch=args.batch, size=args.size, channels=args.channels, steps=args.steps),
        "machine": dict(platform=platform.platform(), cpu_model=harness.cpu_model(), cores=os.cpu_count()),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "note": "the machine is shared: compare variants within this run, not across runs",
    }
    print(f"wrote {harness.write_json(args.out, rows, **extra)}")
    return rows


if __name__ == "__main__":
    main()
