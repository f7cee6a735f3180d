"""ROAD's noisy linear imputation and the score-based curves of attn_jax.metrics.faithfulness, against
independent references written here: the imputation's sparse system set up pixel by pixel and solved by
scipy.sparse.linalg.spsolve (float64), a constant region's known answer, the documented noise, and
per-image, per-step NumPy loops of the deletion / insertion curves and Average Drop by score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from attn_jax.metrics.faithfulness import (
    average_drop_by_score,
    deletion_curve,
    deletion_curve_by_score,
    increase_in_confidence_by_score,
    insertion_curve,
    insertion_curve_by_score,
    noisy_linear_imputation,
)

DIRECT, DIAGONAL = 1.0 / 6.0, 1.0 / 12.0  # ROAD's neighbour weights (Rong et al. 2022)
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def road_np(image, removed):
    """float64 ROAD imputation of one image (H, W, C): for each removed pixel i the equation
    sum_{in-image j} w_ij (x_i - x_j) = 0, kept x_j moved to the right-hand side; scipy's spsolve."""
    image = np.asarray(image, np.float64)
    h, w, c = image.shape
    unknown = np.argwhere(removed)
    if len(unknown) == 0:
        return image.copy()
    if len(unknown) == h * w:
        return np.zeros_like(image)  # nothing to interpolate from (documented)
    index = {tuple(p): n for n, p in enumerate(unknown)}
    a = scipy.sparse.lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for n, (i, j) in enumerate(unknown):
        for dy, dx in OFFSETS:
            y, x = i + dy, j + dx
            if not (0 <= y < h and 0 <= x < w):
                continue
            weight = DIRECT if dy == 0 or dx == 0 else DIAGONAL
            a[n, n] += weight
            if removed[y, x]:
                a[n, index[(y, x)]] -= weight
            else:
                b[n] += weight * image[y, x]
    solution = scipy.sparse.linalg.spsolve(a.tocsc(), b).reshape(len(unknown), c)
    out = image.copy()
    out[removed] = solution
    return out


def _cases():
    rng = np.random.default_rng(0)
    h, w = 9, 7
    block = np.zeros((h, w), bool)
    block[2:7, 1:6] = True
    one_kept = np.ones((h, w), bool)
    one_kept[4, 3] = False
    return {
        "random 30%": rng.random((h, w)) < 0.3,
        "random 90%": rng.random((h, w)) < 0.9,
        "block": block,
        "border row": np.pad(np.ones((1, w), bool), ((0, h - 1), (0, 0))),
        "one pixel kept": one_kept,
        "none removed": np.zeros((h, w), bool),
        "all removed": np.ones((h, w), bool),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_imputation_equals_scipy_spsolve_of_the_written_out_system(name):
    removed = _cases()[name]
    images = np.random.default_rng(1).normal(size=(1, *removed.shape, 2))
    got = noisy_linear_imputation(jnp.asarray(images, jnp.float32), jnp.asarray(removed[None]),
                                  key=jax.random.key(0), noise=0.0)  # fmt: skip
    want = road_np(images[0], removed)
    np.testing.assert_allclose(np.asarray(got[0], np.float64), want, rtol=0, atol=1e-4)  # float32 solve
    assert np.array_equal(np.asarray(got[0])[~removed], images[0].astype(np.float32)[~removed])


def test_imputation_in_float64_solves_the_system_to_round_off():
    removed = _cases()["random 90%"]
    images = np.random.default_rng(2).normal(size=(1, *removed.shape, 1))
    with jax.enable_x64(True):
        got = noisy_linear_imputation(jnp.asarray(images), jnp.asarray(removed[None]), key=jax.random.key(0),
                                      noise=0.0)  # fmt: skip
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got[0]), road_np(images[0], removed), rtol=0, atol=1e-10)


def test_a_removed_pixel_inside_a_constant_region_gets_the_constant():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(10, 12, 1))
    image[:, :6] = 0.7  # the left half is constant
    removed = np.zeros((10, 12), bool)
    removed[2:8, 1:5] = True  # every neighbour of these is 0.7 or removed from the constant half
    removed[4, 9] = True  # one on the textured side, for contrast
    images = jnp.asarray(image[None], jnp.float32)
    out = np.asarray(
        noisy_linear_imputation(images, jnp.asarray(removed[None]), key=jax.random.key(0), noise=0.0)
    )[0]
    np.testing.assert_allclose(out[2:8, 1:5], 0.7, rtol=0, atol=1e-6)
    neighbours = [
        image[4 + dy, 9 + dx, 0] * (DIRECT if dy == 0 or dx == 0 else DIAGONAL) for dy, dx in OFFSETS
    ]
    assert out[4, 9, 0] == pytest.approx(sum(neighbours), abs=1e-6)  # all 8 kept: their weighted mean


def test_noise_is_the_keys_normal_draw_on_removed_pixels_only():
    removed = _cases()["block"]
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, *removed.shape, 3)), jnp.float32)
    mask = jnp.asarray(np.stack([removed, _cases()["random 30%"]]))
    key = jax.random.key(7)
    clean = noisy_linear_imputation(images, mask, key=key, noise=0.0)
    noisy = noisy_linear_imputation(images, mask, key=key, noise=0.25)
    draw = 0.25 * np.asarray(jax.random.normal(key, images.shape, jnp.float32))
    want = np.where(np.asarray(mask)[..., None], draw, 0.0)
    np.testing.assert_allclose(np.asarray(noisy - clean), want, rtol=0, atol=1e-6)
    again = noisy_linear_imputation(images, mask, key=key, noise=0.25)
    assert np.array_equal(np.asarray(noisy), np.asarray(again))  # deterministic for a key
    other = noisy_linear_imputation(images, mask, key=jax.random.key(8), noise=0.25)
    assert not np.allclose(np.asarray(noisy), np.asarray(other))


# ------------------------------------------------------------------------- curves with the road baseline

H, W, C, K = 6, 5, 2, 3  # 30 pixels: steps=4 hits the halves 7.5 and 22.5
RNG = np.random.default_rng(5)
W1 = RNG.normal(size=(H * W * C, 8)) * 0.5
W2 = RNG.normal(size=(8, K)) * 2.0


def predict(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(W1, jnp.float32)) @ jnp.asarray(W2, jnp.float32)


def probs_np(x, labels):
    logits = np.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True))[np.arange(len(labels)), labels]


def road_curve_np(images, maps, labels, steps, insertion, key, noise):
    """The curve's definition: at step s the first round(s HW / S) pixels (stable descending order) are
    removed (deletion) or kept (insertion), the rest imputed by road_np, plus noise * normal(fold_in(key,
    s)) on the imputed pixels."""
    b, h, w, c = images.shape
    out = np.zeros((b, steps + 1))
    for s in range(steps + 1):
        draw = noise * np.asarray(jax.random.normal(jax.random.fold_in(key, s), images.shape), np.float64)
        k = round(s * h * w / steps)
        for i in range(b):
            first = np.zeros(h * w, bool)
            first[np.argsort(-maps[i].ravel(), kind="stable")[:k]] = True
            removed = (~first if insertion else first).reshape(h, w)
            x = road_np(images[i], removed) + np.where(removed[..., None], draw[i], 0.0)
            out[i, s] = probs_np(x[None], labels[i : i + 1])[0]
    return out


@pytest.mark.parametrize("insertion", [False, True])
def test_road_curves_equal_a_per_step_spsolve_loop(insertion):
    rng = np.random.default_rng(6)
    images = rng.normal(size=(3, H, W, C))
    maps = rng.integers(0, 3, size=(3, H, W)).astype(np.float64)  # many ties
    labels = np.array([0, 2, 1])
    key = jax.random.key(11)
    curve = insertion_curve if insertion else deletion_curve
    got = curve(predict, jnp.asarray(images, jnp.float32), jnp.asarray(maps), jnp.asarray(labels), steps=4,
                baseline="road", key=key, road_noise=0.05, chunk_size=2)  # fmt: skip
    want = road_curve_np(images, maps, labels, 4, insertion, key, 0.05)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-4)


# ------------------------------------------------------------------------------------- score-based curves


def box_score(x, targets):
    """A score reading a per-image window and a per-image sign: sigmoid(sign * sum of x in the window)."""
    window = targets["window"].astype(x.dtype)[..., None]
    return jax.nn.sigmoid(targets["sign"] * jnp.sum(x * window, axis=(1, 2, 3)))


def box_score_np(x, window, sign):
    return 1.0 / (1.0 + np.exp(-sign * np.sum(x * window[..., None], axis=(1, 2, 3))))


@pytest.mark.parametrize("insertion", [False, True])
def test_score_curves_equal_a_per_image_loop_with_per_image_targets(insertion):
    rng = np.random.default_rng(7)
    images = rng.normal(size=(3, H, W, C))
    maps = rng.integers(0, 4, size=(3, H, W)).astype(np.float32)
    window = rng.random((3, H, W)) < 0.4
    sign = np.array([1.0, -1.0, 0.5])
    targets = {"window": jnp.asarray(window), "sign": jnp.asarray(sign, jnp.float32)}
    curve = insertion_curve_by_score if insertion else deletion_curve_by_score
    got = curve(box_score, jnp.asarray(images, jnp.float32), jnp.asarray(maps), targets, steps=4,
                baseline="mean", chunk_size=2)  # fmt: skip
    base = np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    want = np.zeros((3, 5))
    for i in range(3):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for s in range(5):
            first = np.zeros(H * W, bool)
            first[order[: round(s * H * W / 4)]] = True
            first = first.reshape(H, W, 1)
            x = np.where(first, images[i], base[i]) if insertion else np.where(first, base[i], images[i])
            want[i, s] = box_score_np(x[None], window[i : i + 1], sign[i])[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)


def test_average_drop_and_increase_by_score_equal_numpy():
    rng = np.random.default_rng(8)
    images = rng.normal(size=(4, H, W, C))
    maps = rng.normal(size=(4, H, W))
    maps[3] = 2.0  # constant: the mask is all zeros
    window = rng.random((4, H, W)) < 0.5
    sign = np.array([1.0, -1.0, 2.0, -0.5])
    targets = {"window": jnp.asarray(window), "sign": jnp.asarray(sign, jnp.float32)}
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    mask = np.where(hi > lo, (maps - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    y = box_score_np(images, window, sign)
    o = box_score_np(images * mask[..., None], window, sign)
    args = (box_score, jnp.asarray(images, jnp.float32), jnp.asarray(maps, jnp.float32), targets)
    np.testing.assert_allclose(
        np.asarray(average_drop_by_score(*args)), np.maximum(y - o, 0) / y * 100, atol=1e-3
    )
    assert np.asarray(increase_in_confidence_by_score(*args)).tolist() == (o > y).astype(float).tolist()


# ------------------------------------------------------------------------------------------- bad arguments

IMAGES, MAPS, LABELS = jnp.zeros((2, H, W, C)), jnp.zeros((2, H, W)), jnp.zeros(2, jnp.int32)
TARGETS = {"window": jnp.ones((2, H, W), bool), "sign": jnp.ones(2)}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: deletion_curve(predict, IMAGES, MAPS, LABELS, baseline="road", road_noise=-1.0),
         "road_noise must be a number >= 0; got -1.0"),
        (lambda: deletion_curve(predict, IMAGES, MAPS, LABELS, road_iterations=0),
         "road_iterations must be an integer >= 1; got 0"),
        (lambda: deletion_curve(predict, IMAGES, MAPS, LABELS, key=jnp.zeros(3)),
         "key must be a single JAX PRNG key"),
        (lambda: deletion_curve_by_score(box_score, IMAGES, MAPS, {**TARGETS, "sign": jnp.ones(3)}),
         "every leaf of targets must have a leading axis B = 2; got shape (3,)"),
        (lambda: deletion_curve_by_score(lambda x, t: x[:, 0, 0], IMAGES, MAPS, TARGETS),
         "score must map images (B, H, W, C) and targets to floating (B,) = (2,); got (2, 2) float32"),
        (lambda: average_drop_by_score("score", IMAGES, MAPS, TARGETS), "score must be a callable"),
        (lambda: noisy_linear_imputation(IMAGES, MAPS, key=jax.random.key(0)), "removed must be (B, H, W)"),
        (lambda: noisy_linear_imputation(IMAGES, MAPS > 0, key=None), "key must be a single JAX PRNG key"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_value_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)
