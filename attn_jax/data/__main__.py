"""Command line for the data layer.

python -m attn_jax.data prepare [--config default] [--data_dir DIR]    # build cluttered_digits once
python -m attn_jax.data show --config detection --out digits.png       # a grid of examples with boxes
python -m attn_jax.data bench [--config default] [--batch_size 256]    # build time + pipeline ex/s
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from attn_jax.data import cluttered_digits as cd
from attn_jax.data._paths import default_data_dir


def _bench(args) -> dict:
    from attn_jax.data.pipeline import make_pipeline

    t0 = time.perf_counter()
    cd.prepare(args.config, args.data_dir)
    out = {"config": args.config, "data_dir": args.data_dir, "prepare_s": round(time.perf_counter() - t0, 2)}
    name = "cluttered_digits" if args.config == "default" else f"cluttered_digits/{args.config}"
    for task in ("classification", "detection", "segmentation"):
        for train in (True, False):
            loader = make_pipeline(
                name, "train", batch_size=args.batch_size, task=task, train=train, seed=0,
                data_dir=args.data_dir, worker_count=args.worker_count, num_devices=1,
            )  # fmt: skip
            it = iter(loader)
            next(it)  # warm-up: opens files, starts read threads
            rates = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for _ in range(args.batches):
                    next(it)
                rates.append(args.batches * args.batch_size / (time.perf_counter() - t))
            out[f"{task}/{'train' if train else 'eval'}_examples_per_s"] = round(statistics.median(rates))
    return out


def _show(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow_datasets as tfds

    cd.prepare(args.config, args.data_dir)
    source = tfds.data_source(f"cluttered_digits/{args.config}", split="train", data_dir=args.data_dir)
    fig, axes = plt.subplots(2, 8, figsize=(16, 4.4))
    for i in range(8):
        ex = source[i]
        h, w = ex["image"].shape[:2]
        axes[0, i].imshow(ex["image"][..., 0], cmap="gray")
        axes[1, i].imshow(ex["mask"], cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        for (y0, x0, y1, x1), label in zip(ex["boxes"] * [h, w, h, w], ex["box_labels"]):
            rect = plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red")
            axes[0, i].add_patch(rect)
            axes[0, i].text(x0, y0 - 1, str(label), color="yellow", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"cluttered_digits/{args.config}: images with boxes (top), masks (bottom)")
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_jax.data", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "show", "bench"])
    parser.add_argument("--config", default="default", choices=[c.name for c in cd.BUILDER_CONFIGS])
    parser.add_argument("--data_dir", default=default_data_dir())
    parser.add_argument("--out", default="cluttered_digits.png")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker_count", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        t0 = time.perf_counter()
        builder = cd.prepare(args.config, args.data_dir)
        print(f"{builder.data_dir} ready ({time.perf_counter() - t0:.1f} s)")
    elif args.command == "show":
        _show(args)
    else:
        print(json.dumps(_bench(args), indent=2))


if __name__ == "__main__":
    main()
