"""`python -m attn_jax.viz` (also `attn-jax visualize ...`): draw attention maps of classifier runs.

    python -m attn_jax.viz --workdir runs/localization --out attention.png
    python -m attn_jax.viz --attention spatial,cbam --num-images 4 --grad-cam   # untrained models
    python -m attn_jax.viz --config experiments/configs/classification.py:cbam --workdir DIR  # attn-jax train

For each attention family, the `attn-jax train` run in WORKDIR/<family>/ (e.g. written by
experiments/localization.py; its config.json and latest checkpoint) is loaded; with --config, WORKDIR is
one `attn-jax train` run of that config, drawn for the config's attention family. Families without a
run are drawn untrained (models from attn_jax.train.build_model) and the title says so.

    python -m attn_jax.viz faithfulness --workdir RUN [--examples N] [--steps S] [--out DIR]

scores a trained classification, detection or segmentation run's explanations (its attention map,
Grad-CAM, gradient x input, integrated gradients, a random map, the digits' mask) by deletion / insertion
AUC, Average Drop and Increase in Confidence: attn_jax.viz.faithfulness.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

from attn_jax.nn import available_attention
from attn_jax.train.factory import build_model
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.draw import attention_grid
from attn_jax.viz.explain import grad_cam, last_conv
from attn_jax.viz.runs import (
    classifier_config,
    eval_batches,
    image_shape,
    init_variables,
    load_config,
    load_run,
    load_train_run,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attn_jax.viz", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="directory of runs, one per family (WORKDIR/<family>/)")
    p.add_argument("--config", help="experiment config PATH[:ARG] of an `attn-jax train` run in --workdir")
    p.add_argument("--attention", default=None, help="comma-separated families (default: all with a map)")
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


def _model(family: str, args, shape, train_run):
    if train_run is not None and family == train_run[0]:
        return *train_run[1:], True
    run_dir = os.path.join(args.workdir, family) if args.workdir and train_run is None else None
    if run_dir and os.path.exists(os.path.join(run_dir, "checkpoints")):
        model, variables, _ = load_run(run_dir)
        return model, variables, True
    widths = tuple(int(w) for w in args.widths.split(","))
    config = classifier_config(family, widths=widths, stride=args.stride, dataset=args.dataset)
    model = build_model(config, bn_axis_name=None)
    return model, init_variables(model, shape, args.seed), False


def _family_map(model, variables, images) -> np.ndarray | None:
    """(N, H, W) map of the family's attention module, or None when it has no spatial extent."""
    maps = capture_attention(model, variables, images)
    spatial = [m.image for m in maps.values() if m.image is not None]
    return None if not spatial else np.asarray(spatial[-1])


def main(argv=None) -> str | dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "faithfulness":
        from attn_jax.viz.faithfulness import main as faithfulness_main

        return faithfulness_main(argv[1:])
    args = _parser().parse_args(argv)
    train_run = None
    if args.config:
        if not args.workdir:
            raise SystemExit("--config needs --workdir (the `attn-jax train` run to draw)")
        config = load_config(args.config)
        model, variables, _ = load_train_run(config, args.workdir)
        train_run = (config.model.attention, model, variables)
        args.dataset = config.data.dataset
    default = train_run[0] if train_run else "spatial,additive,cbam,gate,nonlocal,se"
    families = [f.strip() for f in (args.attention or default).split(",") if f.strip()]
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
        model, variables, trained = _model(family, args, shape, train_run)
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
