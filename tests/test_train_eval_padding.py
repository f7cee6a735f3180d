"""Each task's evaluation through the loop's own path (pipeline padding, the task's eval step over 4
devices, its evaluator) on a test split that does not divide into eval batches: 64 examples in batches of
24, the last one holding 16 examples and 8 zero-padded ones, a whole device's share of them padding.

The padding must count for nothing: the metrics equal the ones computed here from the model's outputs
on the 64 examples alone (NumPy cross-entropy, accuracy, confusion matrix, IoU; detection: the example
count and the metrics of the 64 examples' detections), not a second run of the same path.
"""

import jax
import numpy as np

from attn_jax.data import make_pipeline
from attn_jax.train import loop
from attn_jax.train.runner import build_steps
from tests._train_models import load_experiment_config

EXAMPLES, EVAL_BATCH, DEVICES = 64, 24, 4  # 64 = 2 x 24 + 16: 8 padded examples, device 3's 6 all padding


def _random_state(runner, seed=0):
    """A train state of the runner's shapes with random parameters (kernels ~ N(0, 1 / fan_in)) and
    BatchNorm statistics 0 / 1, made in NumPy: compiling the model's init costs more than this test."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        if "params" in name and leaf.ndim:
            scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.1
            return rng.normal(scale=scale, size=leaf.shape).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)  # step, optimizer state, rng: not used by the eval step

    return jax.tree_util.tree_map_with_path(value, runner.abstract_state())


def _evaluate(task, data_dir, **overrides):
    """(the loop's eval result, the model's outputs on the 64 test examples alone, those examples)."""
    config = load_experiment_config(task)
    config.update(
        dict(data=dict(dir=data_dir, eval_batch_size=EVAL_BATCH, eval_examples=0), num_devices=DEVICES)
    )
    config.update(overrides)
    runner = build_steps(config)
    state = runner.place(_random_state(runner))
    got = loop.evaluate(runner, state, config)
    everything = make_pipeline(
        config.data.dataset, "test", batch_size=EXAMPLES, train=False, data_dir=data_dir, num_devices=1,
        **runner.task.pipeline_kwargs(),
    )  # fmt: skip
    (batch,) = list(everything)
    assert batch["valid"].all() and len(batch["image"]) == EXAMPLES
    host = jax.device_get(state)
    variables = {"params": host.params, "batch_stats": host.batch_stats}
    outputs = jax.jit(lambda v, x: runner.model.apply(v, x, train=False))(variables, batch["image"])
    return got, jax.device_get(outputs), batch, runner


def test_classification_eval_counts_only_the_real_examples(data_dir):
    got, logits, batch, _ = _evaluate("classification", data_dir)
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    loss = -log_probs[np.arange(EXAMPLES), batch["label"]].mean()
    correct = int((logits.argmax(-1) == batch["label"]).sum())
    assert 0 < correct < EXAMPLES  # a count the padding would change
    assert got["accuracy"] == correct / EXAMPLES, (got, correct)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)


def test_segmentation_eval_counts_only_the_real_examples(data_dir):
    got, logits, batch, runner = _evaluate("segmentation", data_dir)
    classes = runner.task.meta.num_classes
    pred, mask = np.asarray(logits).argmax(-1).ravel(), batch["mask"].ravel()
    keep = mask != 255
    cm = np.bincount(mask[keep] * classes + pred[keep], minlength=classes * classes).reshape(classes, classes)
    assert cm.sum() == keep.sum() > 0
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    # a pixel whose two best logits tie within rounding may go either way on another batch split: 1e-4 is
    # 6 of the 65,536 pixels; the 8 padded images would add 8,192 background pixels
    np.testing.assert_allclose(got["pixel_accuracy"], tp.sum() / cm.sum(), atol=1e-4)
    np.testing.assert_allclose(got["per_class_iou"], iou, atol=1e-3)
    np.testing.assert_allclose(got["mIoU"], np.nanmean(iou), atol=1e-4)


def test_detection_eval_counts_only_the_real_examples(data_dir):
    from attn_jax.detection import postprocess
    from attn_jax.metrics import DetectionEvaluator

    # score threshold 0: every image, a padded one too, yields max_detections detections
    got, outputs, batch, runner = _evaluate("detection", data_dir, detection={"score_threshold": 0.0})
    assert got["num_images"] == EXAMPLES
    task, c = runner.task, runner.task.config.detection
    cls_logits, box_deltas = task._flat(outputs)
    dets = jax.device_get(
        postprocess(
            cls_logits, box_deltas, task.anchors(), c.score_threshold, c.nms_iou_threshold, c.pre_nms_top_k,
            c.max_detections,
        )
    )  # fmt: skip
    assert dets.valid.sum() == EXAMPLES * c.max_detections
    evaluator = DetectionEvaluator(task.meta.num_classes, task.meta.image_shape[:2])
    evaluator.add_batch(
        dets.boxes,
        dets.scores,
        dets.classes,
        dets.valid,
        batch["boxes"],
        batch["box_labels"],
        batch["box_valid"],
    )
    want = evaluator.result()
    assert want["AP50_voc"] > 0, want  # some detections are right: false positives would lower it
    for key in ("AP50_voc", "AP50", "mAP", "AR100", "num_images"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-3, err_msg=key)
