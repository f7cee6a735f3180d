"""`python -m attn_jax.viz` (also `attn-jax visualize ...`): draw attention maps of classifier runs.

    python -m attn_jax.viz --workdir runs/localization --out attention.png
    python -m attn_jax.viz --attention spatial,cbam --num-images 4 --grad-cam   # untrained models

For each attention family, the run in WORKDIR/<family>/ (written by experiments/localization.py) is
loaded; without one the family's model is drawn untrained, and the figure's title says so.
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

from attn_jax.nn import available_attention
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.draw import attention_grid
from attn_jax.viz.explain import grad_cam, last_conv
from attn_jax.viz.runs import classifier, eval_batches, image_shape, init_variables, load_run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attn_jax.viz", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="directory of runs, one per family (WORKDIR/<family>/)")
    p.add_argument("--attention", default="spatial,additive,cbam,gate,nonlocal,se", help="comma-separated")
    p.add_argument("--dataset", default="cluttered_digits")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num-images", type=int, default=6)
    p.add_argument("--grad-cam", action="store_true", help="add a Grad-CAM column (last backbone conv)")
    p.add_argument("--widths", default="16,32,64,64", help="SmallCNN widths of untrained models")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="attention.png")
    return p


def _model(family: str, args, shape):
    run_dir = os.path.join(args.workdir, family) if args.workdir else None
    if run_dir and os.path.exists(os.path.join(run_dir, "config.json")):
        model, variables, _ = load_run(run_dir)
        return model, variables, True
    widths = tuple(int(w) for w in args.widths.split(","))
    model = classifier(family, widths=widths, stride=args.stride)
    return model, init_variables(model, shape, args.seed), False


def _family_map(model, variables, images) -> np.ndarray | None:
    """(N, H, W) map of the family's attention module, or None when it has no spatial extent."""
    maps = capture_attention(model, variables, images)
    spatial = [m.image for m in maps.values() if m.image is not None]
    return None if not spatial else np.asarray(spatial[-1])


def main(argv=None) -> str:
    args = _parser().parse_args(argv)
    families = [f.strip() for f in args.attention.split(",") if f.strip()]
    unknown = sorted(set(families) - set(available_attention()))
    if unknown or args.num_images < 1:
        raise SystemExit(
            f"unknown --attention {unknown} (known: {available_attention()}) or --num-images < 1"
        )
    shape = image_shape(args.dataset, args.data_dir)
    batch = next(eval_batches(args.dataset, args.split, batch_size=args.num_images, data_dir=args.data_dir))
    images = jnp.asarray(batch["image"])
    columns, untrained = {}, []
    for family in families:
        model, variables, trained = _model(family, args, shape)
        untrained += [] if trained else [family]
        columns[family] = _family_map(model, variables, images)
        if args.grad_cam and family == families[0]:
            cam, _ = grad_cam(model, variables, images, last_conv(model, variables, images))
            columns[f"Grad-CAM ({family})"] = np.asarray(cam)
    note = f"untrained (no run in --workdir): {', '.join(untrained)}" if untrained else "trained runs"
    title = f"{args.dataset} {args.split}: {note}"
    path = attention_grid(args.out, np.asarray(images), columns, boxes=batch["box"], title=title)
    print(f"wrote {path} ({title})")
    return path


if __name__ == "__main__":
    main()
