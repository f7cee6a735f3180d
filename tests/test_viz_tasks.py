"""Faithfulness of detection and segmentation maps, and the boxes on a detector's attention PNG.

The detection and segmentation scores against NumPy written here (a hand-made anchor / box case with a
tie and padding; softmax over digit pixels with background and ignore labels), tiny detection and
segmentation runs scored end to end by `python -m attn_jax.viz faithfulness`, and the PNG's pixels on
the edges of known boxes."""

import json
import os

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from attn_jax.viz.__main__ import main as viz_main
from attn_jax.viz.draw import BoxSet, attention_grid
from attn_jax.viz.faithfulness import (
    METHODS,
    METRICS,
    best_anchors,
    detection_box_score,
    segmentation_pixel_score,
)
from attn_jax.viz.hooks import attention_png, detection_box_sets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def iou_np(a, b):
    """IoU of two (ymin, xmin, ymax, xmax) boxes, float64."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


ANCHORS = np.array(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0: top left
        [0.0, 0.5, 0.5, 1.0],  # 1: top right
        [0.5, 0.0, 1.0, 0.5],  # 2: bottom left
        [0.25, 0.25, 0.75, 0.75],  # 3: centre
    ]
)
BOXES = np.array(
    [
        [[0.0, 0.55, 0.45, 1.0], [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]],  # top right; padding
        [
            [0.3, 0.3, 0.7, 0.7],
            [0.0, 0.25, 0.5, 0.75],
            [0.6, 0.05, 0.95, 0.45],
        ],  # centre; a tie 0|1; bottom left
        [[0.0, 0.0, 0.0, 0.0]] * 3,  # no boxes
    ]
)
VALID = np.array([[True, False, False], [True, True, True], [False, False, False]])
LABELS = np.array([[2, 0, 0], [1, 4, 0], [0, 0, 0]])


def test_best_anchor_is_the_highest_iou_anchor_first_on_ties():
    got = best_anchors(ANCHORS, BOXES)
    want = np.array([[np.argmax([iou_np(b, a) for a in ANCHORS]) for b in row] for row in BOXES])
    assert got[VALID].tolist() == want[VALID].tolist() == [1, 3, 0, 2]
    tied = [iou_np(BOXES[1, 1], a) for a in ANCHORS]  # (0.0, 0.25, 0.5, 0.75): IoU 1/3 with 0, 1 and 3
    assert tied[0] == tied[1] == tied[3] == pytest.approx(1 / 3) and tied[2] == 0.0


@pytest.mark.parametrize("logit", [False, True])
def test_detection_score_is_the_mean_true_class_score_at_the_best_anchors(logit):
    rng = np.random.default_rng(0)
    cls_logits = rng.normal(size=(3, 2, 2, 1, 5)) * 3  # (N, h, w, A, K): 4 anchors, row-major
    flat = cls_logits.reshape(3, 4, 5)
    want = np.zeros(3)
    for i in range(3):
        values = []
        for m in range(3):
            if VALID[i, m]:
                ious = [iou_np(BOXES[i, m], a) for a in ANCHORS]
                z = flat[i, int(np.argmax(ious)), LABELS[i, m]]
                values.append(z if logit else 1.0 / (1.0 + np.exp(-z)))
        want[i] = np.mean(values) if values else 0.0
    targets = {"anchor": jnp.asarray(best_anchors(ANCHORS, BOXES)), "label": jnp.asarray(LABELS),
               "valid": jnp.asarray(VALID)}  # fmt: skip
    got = detection_box_score(jnp.asarray(cls_logits, jnp.float32), targets, logit=logit)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("logit", [False, True])
def test_segmentation_score_is_the_mean_true_class_probability_on_digit_pixels(logit):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 5, 4)) * 2
    mask = rng.integers(0, 4, size=(3, 4, 5))
    mask[0, 0, :] = 255  # ignore label: left out
    mask[2] = 0  # background only: score 0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.zeros(3)
    for i in range(3):
        pixels = [(y, x) for y in range(4) for x in range(5) if 0 < mask[i, y, x] < 4]
        chosen = [logits[i, y, x, mask[i, y, x]] if logit else p[i, y, x, mask[i, y, x]] for y, x in pixels]
        want[i] = np.mean(chosen) if chosen else 0.0
    got = segmentation_pixel_score(jnp.asarray(logits, jnp.float32), jnp.asarray(mask), logit=logit)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- boxes on the PNG


def _panel(rgb):
    """(r0, r1, c0, c1) of the black image panel: the rows and columns mostly of (near) black pixels
    (the legend's black text, under the panel, is not)."""
    black = np.all(rgb < 0.05, axis=-1)
    rows = np.nonzero(black.sum(axis=1) > 0.5 * black.sum(axis=1).max())[0]
    cols = np.nonzero(black.sum(axis=0) > 0.5 * black.sum(axis=0).max())[0]
    return rows.min(), rows.max(), cols.min(), cols.max()


def _edge_has_colour(rgb, panel, box, colour, side):
    """Whether 5 points along one edge of a normalised box (30%..70% of its length, away from a label
    in the top-left corner) each have a pixel of `colour` within 2 px, in the panel's pixel grid."""
    r0, r1, c0, c1 = panel
    ph, pw = r1 - r0 + 1, c1 - c0 + 1
    y0, x0, y1, x1 = box
    for t in np.linspace(0.3, 0.7, 5):
        if side in ("top", "bottom"):
            r = r0 + (y0 if side == "top" else y1) * ph
            c = c0 + (x0 + t * (x1 - x0)) * pw
        else:
            r = r0 + (y0 + t * (y1 - y0)) * ph
            c = c0 + (x0 if side == "left" else x1) * pw
        r, c = int(round(r)), int(round(c))
        window = rgb[r - 2 : r + 3, c - 2 : c + 3]
        if not (np.linalg.norm(window - np.asarray(colour), axis=-1) < 0.3).any():
            return False
    return True


def test_true_and_predicted_boxes_are_drawn_in_their_colours_on_every_panel(tmp_path):
    true = np.array([[[0.25, 0.2, 0.75, 0.6]]])
    predicted = np.array([[[0.1, 0.55, 0.45, 0.95], [0.0, 0.0, 0.0, 0.0]]])  # a padding row
    sets = [BoxSet("true boxes", true, "lime"),
            BoxSet("predicted", predicted, "magenta", labels=np.array([[3, 0]]))]  # fmt: skip
    path = attention_grid(str(tmp_path / "boxes.png"), np.zeros((1, 32, 32, 1)), {}, box_sets=sets)
    rgb = mpimg.imread(path)[..., :3]
    panel = _panel(rgb)
    assert panel[1] - panel[0] > 50 and panel[3] - panel[2] > 50  # the image panel was found
    for side in ("top", "bottom", "left", "right"):
        assert _edge_has_colour(rgb, panel, true[0, 0], (0.0, 1.0, 0.0), side), side
        assert _edge_has_colour(rgb, panel, predicted[0, 0], (1.0, 0.0, 1.0), side), side
        assert not _edge_has_colour(rgb, panel, true[0, 0], (1.0, 0.0, 1.0), side), side
    below = rgb[panel[1] + 3 :]  # the legend, under the panel
    assert (np.linalg.norm(below - [0.0, 1.0, 0.0], axis=-1) < 0.3).any()
    assert (np.linalg.norm(below - [1.0, 0.0, 1.0], axis=-1) < 0.3).any()


# ------------------------------------------------------------------------------------------ tiny runs


def _train(task, data_dir, workdir, callbacks=()):
    from attn_jax.train import loop
    from attn_jax.viz.runs import load_config

    config = load_config(os.path.join(ROOT, "experiments", "configs", f"{task}.py") + ":spatial,tiny")
    config.data.dir, config.progress = data_dir, False
    config.png_examples = 2 if callbacks else 0
    config.num_train_steps, config.schedule.warmup_steps, config.num_devices = 2, 0, 1
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    summary = loop.train_and_evaluate(config, workdir, callbacks=callbacks)
    return config, summary


@pytest.fixture(scope="module")
def detection_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("detection_run"))
    config, summary = _train("detection", data_dir, workdir, callbacks=[attention_png])
    return workdir, config, summary


@pytest.fixture(scope="module")
def segmentation_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("segmentation_run"))
    _train("segmentation", data_dir, workdir)
    return workdir


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_command_scores_every_method_of_a_detection_and_a_segmentation_run(
    task, detection_run, segmentation_run, tmp_path, capsys
):
    workdir = detection_run[0] if task == "detection" else segmentation_run
    out = str(tmp_path / "out")
    baseline = "road" if task == "segmentation" else "zero"
    argv = ["faithfulness", "--workdir", workdir, "--examples", "5", "--steps", "4", "--ig-steps", "2",
            "--batch-size", "4", "--out", out, "--deletion-baseline", baseline]  # fmt: skip
    viz_main(argv)  # 5 images: a full batch of 4 and a padded one
    printed = capsys.readouterr().out
    with open(os.path.join(out, "faithfulness.json")) as f:
        report = json.load(f)
    assert report["task"] == task and report["examples"] == 5 and report["family"] == "spatial"
    assert list(report["methods"]) == list(METHODS)  # a spatial map, a conv to hook, the digits' mask
    assert report["baselines"]["deletion"].startswith(baseline)
    assert ("true boxes" in report["score"]) == (task == "detection")
    assert 0.0 <= report["clean_score"]["mean"] <= 1.0
    for name, row in report["methods"].items():
        for metric in METRICS:
            stat = row[metric]
            assert stat["n"] == 5 and np.isfinite(stat["mean"]) and np.all(np.isfinite(stat["ci95"])), name
        for metric in ("deletion_auc", "insertion_auc", "increase_in_confidence"):
            assert 0.0 <= row[metric]["mean"] <= 1.0, (name, metric)
        assert 0.0 <= row["average_drop"]["mean"] <= 100.0
        for kind in ("deletion_curve", "insertion_curve"):
            curve = np.asarray(row[kind])
            assert curve.shape == (5,) and np.all((curve >= 0) & (curve <= 1)), (name, kind)
        # every map's curve starts (deletion) and ends (insertion) at the unperturbed image's score
        assert row["deletion_curve"][0] == pytest.approx(report["clean_score"]["mean"], abs=1e-6)
        assert row["insertion_curve"][-1] == pytest.approx(report["clean_score"]["mean"], abs=1e-6)
    location = report["attention_location"]
    assert location["n"] == 5 and 0.0 <= location["background_higher"] <= 1.0
    assert "| oracle | " in printed and "on the background" in printed
    assert mpimg.imread(os.path.join(out, "faithfulness.png")).shape[1] > 500


def test_detector_png_has_the_true_boxes(detection_run):
    workdir, _, summary = detection_run
    assert summary["attention_png"] == os.path.join(workdir, "attention_maps.png")
    rgb = mpimg.imread(summary["attention_png"])[..., :3]
    lime = np.linalg.norm(rgb - [0.0, 1.0, 0.0], axis=-1) < 0.3
    assert lime.sum() > 100  # the true boxes' outlines (2 images x 2 panels) and the legend


def test_predicted_boxes_are_the_detections_scoring_at_least_the_threshold(detection_run):
    from attn_jax.train.tasks import make_task

    _, config, _ = detection_run
    task = make_task(config)
    anchors = np.asarray(task.anchors())
    k = task.meta.num_classes
    cls_logits = np.full((1, *(np.array(task.meta.image_shape[:2]) // 4), task.num_anchors, k), -10.0)
    assert cls_logits[0, ..., 0].size == len(anchors)  # stride 4: one row of anchors per output
    flat = cls_logits.reshape(1, -1, k)
    flat[0, 100, 7] = 3.0  # sigmoid 0.95: drawn
    flat[0, 200, 2] = -0.5  # sigmoid 0.38: a detection (above the 0.05 threshold), not drawn
    outputs = (
        jnp.asarray(flat.reshape(cls_logits.shape), jnp.float32),
        jnp.zeros((*cls_logits.shape[:4], 4)),
    )
    batch = {"image": np.zeros((1, *task.meta.image_shape), np.float32), "box_labels": np.array([[5]]),
             "boxes": np.array([[[0.1, 0.1, 0.5, 0.4]]]), "box_valid": np.array([[True]]),
             "valid": np.array([True])}  # fmt: skip
    true, predicted = detection_box_sets(task, batch, outputs)
    assert true.boxes.tolist() == batch["boxes"].tolist() and true.valid.tolist() == [[True]]
    keep = predicted.valid[0]
    assert keep.sum() == 1
    np.testing.assert_allclose(predicted.boxes[0][keep][0], np.clip(anchors[100], 0.0, 1.0), atol=1e-5)
    assert predicted.labels[0][keep].tolist() == [7]
    assert true.color != predicted.color
