"""NMS against a straightforward NumPy greedy reference; post-processing shapes, batching and jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.detection import encode_boxes, generate_anchors, nms_keep, postprocess


def _np_iou(a, b):
    ymin, xmin = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    ymax, xmax = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(ymax - ymin, 0) * max(xmax - xmin, 0)
    area = lambda x: max(x[2] - x[0], 0) * max(x[3] - x[1], 0)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, thr, valid, classes):
    """Textbook greedy NMS: take the best remaining box, drop same-class boxes overlapping it."""
    remaining = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if valid[i]]
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [
            j for j in remaining if classes[j] != classes[best] or _np_iou(boxes[best], boxes[j]) <= thr
        ]
    return keep


def _random_boxes(rng, k):
    centre = rng.uniform(0.2, 0.8, (k, 2))
    size = rng.uniform(0.05, 0.4, (k, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_reference(seed):
    rng = np.random.default_rng(seed)
    k = 60
    boxes, scores = _random_boxes(rng, k), rng.uniform(size=k).astype(np.float32)
    scores[:5] = scores[5]  # ties are broken by index in both
    classes = rng.integers(0, 3, k)
    valid = rng.uniform(size=k) > 0.2
    keep = jax.jit(nms_keep, static_argnums=2)(boxes, scores, 0.45, valid, classes)
    expected = np.zeros(k, bool)
    expected[reference_nms(boxes, scores, 0.45, valid, classes)] = True
    np.testing.assert_array_equal(keep, expected)
    single = nms_keep(jnp.asarray(boxes), jnp.asarray(scores), 0.3)
    expected = np.zeros(k, bool)
    expected[reference_nms(boxes, scores, 0.3, np.ones(k, bool), np.zeros(k))] = True
    np.testing.assert_array_equal(single, expected)


def test_postprocess_recovers_objects_per_class_and_batch():
    anchors = generate_anchors((8, 8), stride=4, sizes=(8,), aspect_ratios=(1.0,))
    n, c = anchors.shape[0], 3
    gt = jnp.array([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75]])
    logits = np.full((2, n, c), -10.0, np.float32)
    deltas = np.zeros((2, n, 4), np.float32)
    # example 0: anchors 18, 19 both say class 1 at gt 0 (duplicate), anchor 45 says class 2 at gt 1, and
    # also class 0 at gt 1 (another class is never suppressed by it).
    for a, cls, g, s in [(18, 1, 0, 3.0), (19, 1, 0, 2.0), (45, 2, 1, 1.0), (45, 0, 1, 0.5)]:
        logits[0, a, cls] = s
        deltas[0, a] = encode_boxes(gt[g], anchors[a])
    dets = jax.jit(postprocess, static_argnames=("max_detections",))(
        jnp.asarray(logits), jnp.asarray(deltas), anchors, max_detections=5
    )
    assert dets.boxes.shape == (2, 5, 4) and dets.classes.dtype == jnp.int32
    np.testing.assert_array_equal(dets.valid[0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(dets.classes[0, :3], [1, 2, 0])
    np.testing.assert_allclose(dets.boxes[0, :3], gt[jnp.array([0, 1, 1])], atol=1e-5)
    np.testing.assert_allclose(dets.scores[0, :3], jax.nn.sigmoid(jnp.array([3.0, 1.0, 0.5])), rtol=1e-6)
    assert not np.any(dets.valid[1]) and np.all(dets.scores[1] == 0)  # all below the score threshold


def test_postprocess_bad_shapes():
    anchors = generate_anchors((2, 2), 4, (4,))
    with pytest.raises(ValueError, match="box_deltas"):
        postprocess(jnp.zeros((4, 2)), jnp.zeros((3, 4)), anchors)
    with pytest.raises(ValueError, match="max_detections"):
        postprocess(jnp.zeros((4, 2)), jnp.zeros((4, 4)), anchors, max_detections=100)
