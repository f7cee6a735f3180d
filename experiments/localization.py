"""Does learned attention point at the digit? Train each attention family on cluttered_digits
classification, then score its attention map (and Grad-CAM) against the digit's box and mask.

    python experiments/localization.py --workdir runs/localization             # ~15 min on 2 CPU cores
    python experiments/localization.py --workdir /tmp/loc --config tiny        # seconds (tests)

Each family is trained by the library's loop (attn_jax.train.train_and_evaluate, a classification config
per family), one `attn-jax train` run per family in WORKDIR/<family>/ (drawn by `python -m attn_jax.viz`).
Writes WORKDIR/localization.json, WORKDIR/localization.md (the table) and WORKDIR/localization.png (test
images x families).
Columns: test accuracy; pointing game (map maximum inside the digit's box); energy (share of the map's
mass on the digit's pixels); the same two for the untrained model. Chance: a uniform map.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import ml_collections
import numpy as np

from attn_jax.metrics.localization import LocalizationStats, boxes_to_mask, uniform_chance
from attn_jax.train import build_model, train_and_evaluate
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.draw import attention_grid
from attn_jax.viz.explain import grad_cam, last_conv
from attn_jax.viz.runs import classifier_config, eval_batches, image_shape, init_variables, load_train_run


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    """default: 64x64 cluttered digits, 8 families x 400 steps; tiny: 32x32, a few steps (tests).
    SmallCNN (16, 32, 64, 64) at stride 8: 8x8 maps, receptive field 31 px (digits are 16-28 px)."""
    c = ml_collections.ConfigDict()
    c.dataset = "cluttered_digits"
    c.families = ("none", "spatial", "additive", "cbam", "gate", "nonlocal", "se", "eca")
    c.grad_cam_families = ("none", "spatial")
    c.widths, c.stride = (16, 32, 64, 64), 8
    c.steps, c.batch_size, c.learning_rate, c.weight_decay = 400, 64, 3e-3, 1e-4
    c.eval_examples, c.eval_batch_size, c.num_images, c.seed = 1000, 250, 6, 0
    if arg == "tiny":
        c.dataset = "cluttered_digits/tiny"
        c.families, c.grad_cam_families = ("spatial", "se"), ("spatial",)
        c.widths, c.steps, c.batch_size = (4, 8, 8, 8), 3, 16
        c.eval_examples, c.eval_batch_size, c.num_images = 32, 16, 2
    elif arg != "default":
        raise ValueError(f"config arg must be 'default' or 'tiny', got {arg!r}")
    return c


def family_config(config, family: str) -> ml_collections.ConfigDict:
    """The library's classification config (attn_jax.train.config vocabulary) of one family's run:
    AdamW on a cosine schedule, no warmup, no clipping, no label smoothing, evaluated only at the end."""
    c = classifier_config(family, widths=config.widths, stride=config.stride, dataset=config.dataset)
    c.seed, c.data.batch_size, c.num_train_steps = config.seed, config.batch_size, config.steps
    c.optim.lr, c.optim.weight_decay, c.optim.clip_norm = config.learning_rate, config.weight_decay, 0.0
    c.schedule.warmup_steps, c.classification.label_smoothing = 0, 0.0
    c.data.eval_batch_size, c.data.eval_examples = config.eval_batch_size, config.eval_examples
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 50, 0, 0
    c.keep_latest, c.keep_best = 1, 0
    c.progress, c.png_examples = False, 0
    return c


def train(config, family: str, run_dir: str) -> tuple[object, dict, dict]:
    """Trains `family` with attn_jax.train.train_and_evaluate into run_dir (resuming a run there);
    returns the model, its trained variables (the run's final checkpoint) and the run's summary."""
    run_config = family_config(config, family)
    summary = train_and_evaluate(run_config, run_dir)
    model, variables, _ = load_train_run(run_config, run_dir)
    return model, variables, {"train_seconds": summary["train_time_s"], "run": run_dir}


def _scores(stats: dict[str, LocalizationStats], key: str, maps, batch) -> None:
    box = boxes_to_mask(jnp.asarray(batch["box"]), maps.shape[1:])
    stats.setdefault(f"{key}_box", LocalizationStats()).update(maps, box, batch["valid"])
    stats.setdefault(f"{key}_mask", LocalizationStats()).update(maps, batch["digit"], batch["valid"])


def evaluate(model, variables, config, *, with_grad_cam: bool = False) -> dict:
    """Accuracy and localisation of the family's attention map (and Grad-CAM) over the eval examples."""
    correct, count, stats = 0, 0, {}
    for batch in eval_batches(config.dataset, batch_size=config.eval_batch_size, limit=config.eval_examples):
        images = jnp.asarray(batch["image"])
        maps, logits = capture_attention(model, variables, images, train=False, with_output=True)
        correct += int(np.sum((np.argmax(logits, -1) == batch["label"]) & batch["valid"]))
        count += int(batch["valid"].sum())
        spatial = [m.image for m in maps.values() if m.image is not None]
        if spatial:
            _scores(stats, "attention", spatial[-1], batch)
        if with_grad_cam:
            cam, _ = grad_cam(model, variables, images, last_conv(model, variables, images), train=False)
            _scores(stats, "grad_cam", cam, batch)
        chance = (uniform_chance(boxes_to_mask(jnp.asarray(batch["box"]), images.shape[1:3])), batch["digit"])
        stats.setdefault("chance_box", []).append(np.asarray(chance[0])[batch["valid"]])
        stats.setdefault("chance_mask", []).append(np.asarray(uniform_chance(chance[1]))[batch["valid"]])
    out = {"accuracy": correct / count, "count": count}
    for key, value in stats.items():
        if isinstance(value, list):
            out[key] = float(np.mean(np.concatenate(value)))
        else:
            res = value.compute()
            out[key] = {"pointing_game": res["pointing_game"], "energy": res["energy"]}
    return out


def _loc(result: dict, key: str) -> tuple[float | None, float | None]:
    """(pointing game in the box, energy in the digit mask) of `key`'s maps, None when not scored."""
    return result.get(f"{key}_box", {}).get("pointing_game"), result.get(f"{key}_mask", {}).get("energy")


def _row(name: str, result: dict, key: str, untrained: dict, accuracy: bool = True) -> dict:
    row = {"method": name, "accuracy": result["accuracy"] if accuracy else None}
    row["pointing_game"], row["energy"] = _loc(result, key)
    row["pointing_untrained"], row["energy_untrained"] = _loc(untrained, key)
    return row


def markdown(rows: list[dict]) -> str:
    """The results table: one row per method, '-' where a figure does not apply."""
    cols = ["method", "accuracy", "pointing_game", "energy", "pointing_untrained", "energy_untrained"]
    heads = ["method", "test acc.", "pointing game (box)", "energy in digit", "pointing, untrained",
             "energy, untrained"]  # fmt: skip
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _draw(config, models: dict, path: str) -> str:
    batch = next(eval_batches(config.dataset, batch_size=config.num_images))
    images = jnp.asarray(batch["image"])
    columns = {}
    for family, (model, variables) in models.items():
        maps = capture_attention(model, variables, images, train=False)
        spatial = [m.image for m in maps.values() if m.image is not None]
        columns[family] = np.asarray(spatial[-1]) if spatial else None
        if family in config.grad_cam_families:
            cam, _ = grad_cam(model, variables, images, last_conv(model, variables, images), train=False)
            columns[f"Grad-CAM ({family})"] = np.asarray(cam)
    title = f"{config.dataset} test, trained {config.steps} steps"
    return attention_grid(path, np.asarray(images), columns, boxes=batch["box"], title=title)


def run(config, workdir: str) -> dict:
    """Trains and scores every family in config.families; writes JSON, Markdown and PNG into workdir."""
    os.makedirs(workdir, exist_ok=True)
    shape = image_shape(config.dataset)
    rows, results, models = [], {}, {}
    for family in config.families:
        untrained_model = build_model(family_config(config, family), bn_axis_name=None)
        cams = family in config.grad_cam_families
        untrained_vars = init_variables(untrained_model, shape, config.seed)
        untrained = evaluate(untrained_model, untrained_vars, config, with_grad_cam=cams)
        model, variables, summary = train(config, family, os.path.join(workdir, family))
        result = {**evaluate(model, variables, config, with_grad_cam=cams), **summary}
        results[family] = {"trained": result, "untrained": untrained}
        rows.append(_row(family, result, "attention", untrained))
        if cams:
            rows.append(_row(f"Grad-CAM ({family} model)", result, "grad_cam", untrained, accuracy=False))
        models[family] = (model, variables)
        print(f"{family}: {json.dumps(rows[-1])}", flush=True)
    first = results[config.families[0]]["trained"]
    rows.append(
        {
            "method": "uniform map (chance)",
            "pointing_game": first["chance_box"],
            "energy": first["chance_mask"],
        }
    )
    report = {"config": config.to_dict(), "rows": rows, "results": results}
    with open(os.path.join(workdir, "localization.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    with open(os.path.join(workdir, "localization.md"), "w") as f:
        f.write(markdown(rows))
    report["figure"] = _draw(config, models, os.path.join(workdir, "localization.png"))
    print(markdown(rows))
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default="default", choices=("default", "tiny"))
    p.add_argument("--steps", type=int, default=None, help="override config.steps")
    p.add_argument("--families", default=None, help="comma-separated subset of config.families")
    args = p.parse_args(argv)
    config = get_config(args.config)
    if args.steps is not None:
        config.steps = args.steps
    if args.families:
        config.families = tuple(args.families.split(","))
    start = time.perf_counter()
    report = run(config, args.workdir)
    print(f"total {time.perf_counter() - start:.0f} s; figure {report['figure']}")
    return report


if __name__ == "__main__":
    main()
