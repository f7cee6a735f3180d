"""Faithfulness metrics against NumPy float64 references written here: deletion / insertion curves (ties,
rounding, chunking, baselines), a known-answer region model, Average Drop / Increase in Confidence,
Spearman against scipy, the cascading randomization check, and the argument errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from attn_jax.metrics.faithfulness import (
    _blur,
    average_drop,
    curve_auc,
    deletion_auc,
    deletion_curve,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
    randomization_check,
    spearman,
)

H, W, C, K = 6, 5, 2, 3  # 30 pixels: steps=4 hits the halves 7.5 and 22.5
RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(H * W * C, 8)) * 0.5
W2 = RNG.normal(size=(8, K)) * 2.0


def predict(x):
    """A small two-layer classifier in float32 (jnp)."""
    hidden = jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(W1, jnp.float32))
    return hidden @ jnp.asarray(W2, jnp.float32)


def predict_np(x):
    """The same classifier in float64 NumPy."""
    return np.tanh(x.reshape(x.shape[0], -1) @ W1) @ W2


def softmax_prob_np(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p[np.arange(len(labels)), labels]


def baseline_np(images, baseline, sigma):
    if baseline == "zero":
        return np.zeros_like(images)
    if baseline == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    return scipy.ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="reflect", truncate=4.0)


def curve_np(images, maps, labels, steps, baseline, insertion, sigma=1.5):
    """Per-image, per-step float64 loop: the definition written out."""
    images = np.asarray(images, np.float64)
    base = baseline_np(images, baseline, sigma)
    b, h, w, c = images.shape
    out = np.zeros((b, steps + 1))
    for i in range(b):
        order = np.argsort(-np.asarray(maps[i], np.float64).ravel(), kind="stable")
        for s in range(steps + 1):
            k = round(s * h * w / steps)
            chosen = np.zeros(h * w, bool)
            chosen[order[:k]] = True
            chosen = chosen.reshape(h, w, 1)
            if insertion:
                x = np.where(chosen, images[i], base[i])
            else:
                x = np.where(chosen, base[i], images[i])
            out[i, s] = softmax_prob_np(predict_np(x[None]), labels[i : i + 1])[0]
    return out


def trapezoid_np(curve):
    s = curve.shape[-1] - 1
    return np.array([np.trapezoid(c, dx=1.0 / s) for c in curve])


def _data(b=3, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, H, W, C)).astype(np.float32)
    maps = rng.integers(0, 4, size=(b, H, W)).astype(np.float32)  # many ties
    labels = rng.integers(0, K, size=b)
    return images, maps, labels


@pytest.mark.parametrize(
    ("insertion", "baseline", "steps", "chunk_size"),
    [
        (False, "zero", 4, 2),  # halves: round(7.5) = 8, round(22.5) = 22; a 1-step remainder chunk
        (False, "mean", 7, 3),
        (False, "blur", 30, 64),  # chunk larger than the curve: no lax.map at all
        (True, "blur", 4, 1),
        (True, "zero", 7, 4),
        (True, "mean", 45, 16),  # more steps than pixels
    ],
)
def test_curves_and_aucs_match_a_float64_loop(insertion, baseline, steps, chunk_size):
    images, maps, labels = _data()
    fn, auc_fn = (insertion_curve, insertion_auc) if insertion else (deletion_curve, deletion_auc)
    kw = dict(steps=steps, baseline=baseline, blur_sigma=1.5, chunk_size=chunk_size)
    got = fn(predict, images, maps, labels, **kw)
    want = curve_np(images, maps, labels, steps, baseline, insertion)
    assert got.shape == (3, steps + 1) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(auc_fn(predict, images, maps, labels, **kw), trapezoid_np(want), atol=2e-6)


def test_ties_are_broken_by_flat_index_and_signed_zeros_tie():
    """A map of equal values (with -0.0 among them) removes pixels in row-major order."""
    images = np.ones((1, 2, 3, 1), np.float32)
    maps = np.array([[[0.0, -0.0, 0.0], [-0.0, 0.0, -0.0]]], np.float32)
    # The class-1 logit weights pixel j by 2**j: the curve reveals which pixels are gone at each step.
    weights = 2.0 ** np.arange(6)

    def by_pixel(x):
        z = x.reshape(x.shape[0], -1) @ jnp.asarray(weights, jnp.float32) / 64.0
        return jnp.stack([jnp.zeros_like(z), z], axis=1)

    got = deletion_curve(by_pixel, images, maps, np.array([1]), steps=6, chunk_size=8)
    remaining = [weights[k:].sum() / 64.0 for k in range(7)]  # the first k flat pixels removed
    np.testing.assert_allclose(got[0], [1.0 / (1.0 + math.exp(-r)) for r in remaining], atol=1e-6)


def test_blur_baseline_matches_scipy_including_double_reflection():
    x = RNG.normal(size=(2, 5, 7, 3)).astype(np.float32)
    for sigma in (0.7, 3.0):  # radius 3, and radius 12 > both sides (the reflection wraps twice)
        want = scipy.ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0), mode="reflect")
        np.testing.assert_allclose(_blur(jnp.asarray(x), sigma), want, atol=1e-5)


# ------------------------------------------------------------------------------ known answer


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _region_model():
    """8x8 images of ones; the class-1 logit is 2 n - 4 with n the pixels of R (rows 2-3, cols 5-6) left."""
    region = np.zeros((8, 8), bool)
    region[2:4, 5:7] = True

    def region_predict(x):
        n = jnp.sum(x[..., 0] * jnp.asarray(region, x.dtype), axis=(1, 2))
        return jnp.stack([jnp.zeros_like(n), 2.0 * n - 4.0], axis=1)

    return region, region_predict


def test_region_model_oracle_reaches_the_extreme_aucs():
    region, region_predict = _region_model()
    rng = np.random.default_rng(3)
    images = np.ones((1, 8, 8, 1), np.float32)
    first = region[None].astype(np.float32)  # R ranked first (ties inside R and outside by index)
    last = 1.0 - first  # R ranked last
    randoms = np.concatenate(  # a permutation and 19 Gaussian maps: every other order lies in between
        [rng.permutation(64).reshape(1, 8, 8)] + [rng.normal(size=(1, 8, 8)) for _ in range(19)]
    ).astype(np.float32)
    maps = np.concatenate([first, last, randoms])
    images = np.broadcast_to(images, (22, 8, 8, 1))
    labels = np.ones(22, np.int32)
    kw = dict(steps=16, baseline="zero", chunk_size=5)  # k_s = 4 s: step 1 removes exactly |R| = 4 pixels
    dele = np.asarray(deletion_auc(region_predict, images, maps, labels, **kw))
    ins = np.asarray(insertion_auc(region_predict, images, maps, labels, **kw))
    hi, lo = _sig(4.0), _sig(-4.0)
    # By hand: trapezoid over 17 points = (c0 / 2 + c1 + ... + c15 + c16 / 2) / 16.
    np.testing.assert_allclose(dele[0], (hi / 2 + 15 * lo + lo / 2) / 16, atol=1e-6)  # R gone at step 1
    np.testing.assert_allclose(dele[1], (hi / 2 + 15 * hi + lo / 2) / 16, atol=1e-6)  # R gone at step 16
    np.testing.assert_allclose(ins[0], (lo / 2 + 15 * hi + hi / 2) / 16, atol=1e-6)
    np.testing.assert_allclose(ins[1], (lo / 2 + 15 * lo + hi / 2) / 16, atol=1e-6)
    assert dele.argmin() == 0 and dele.argmax() == 1 and np.all(dele[2:] > dele[0] + 1e-3)
    assert ins.argmax() == 0 and ins.argmin() == 1 and np.all(ins[2:] < ins[0] - 1e-3)
    np.testing.assert_array_less(dele[2:], dele[1] - 1e-3)
    np.testing.assert_array_less(ins[1] + 1e-3, ins[2:])


def test_curve_auc_is_the_trapezoid_rule():
    np.testing.assert_allclose(curve_auc(jnp.array([[1.0, 0.5, 0.25, 0.0]])), [(0.5 + 0.5 + 0.25) / 3])


def test_curves_run_under_jit_and_vmap_with_parameters_as_arguments():
    images, maps, labels = _data(b=2)

    def auc(w1, x, m, y):
        pred = lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w1) @ jnp.asarray(W2, jnp.float32)
        return deletion_auc(pred, x, m, y, steps=5, baseline="mean", chunk_size=2)

    w1 = jnp.asarray(W1, jnp.float32)
    want = trapezoid_np(curve_np(images, maps, labels, 5, "mean", False))
    np.testing.assert_allclose(jax.jit(auc)(w1, images, maps, labels), want, atol=2e-6)
    stacked = jax.vmap(auc, in_axes=(None, 0, 0, 0))(w1, images[:, None], maps[:, None], labels[:, None])
    np.testing.assert_allclose(stacked[:, 0], want, atol=2e-6)


# --------------------------------------------------------------------- Average Drop / Increase


def test_average_drop_and_increase_match_numpy():
    images, maps, _ = _data(b=6, seed=5)
    images *= 0.5
    labels = np.array([2, 2, 0, 0, 1, 2])  # probabilities well inside (0, 1); both outcomes occur
    maps[1] = 2.5  # constant map: the mask is all zeros
    maps[2] = -maps[2] - 7.0  # negative values: min-max normalisation still spans [0, 1]
    m = maps.astype(np.float64)
    lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
    norm = np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    y = softmax_prob_np(predict_np(images.astype(np.float64)), labels)
    o = softmax_prob_np(predict_np(images * norm[..., None]), labels)
    drop = np.maximum(y - o, 0.0) / y * 100.0
    increase = (o > y).astype(float)
    assert 0 < increase.sum() < len(increase)
    np.testing.assert_allclose(average_drop(predict, images, maps, labels), drop, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(increase_in_confidence(predict, images, maps, labels), increase)


# ------------------------------------------------------------------------------ Spearman


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, size=(3, 2, 40)).astype(np.float32)  # heavy ties
    y = (x + rng.integers(-3, 4, size=x.shape)).astype(np.float32)
    y[0, 0] = -x[0, 0]  # a perfect negative association
    want = np.array([[scipy.stats.spearmanr(a, b).statistic for a, b in zip(xa, ya)] for xa, ya in zip(x, y)])
    np.testing.assert_allclose(spearman(x, y), want, atol=1e-6)
    assert np.isnan(spearman(jnp.ones(5), jnp.arange(5.0)))  # constant input: NaN, as scipy


# ---------------------------------------------------------------------- randomization check


def _params():
    rng = np.random.default_rng(11)
    return {
        "out": {"w": (rng.normal(size=(H, W)) * 3.0).astype(np.float32), "b": np.zeros(4, np.float32)},
        "mid": {"w": (rng.normal(size=(64, 64)) * 0.1).astype(np.float32), "step": np.arange(3)},
        "inp": {"w": (rng.normal(size=(H, W)) + 1.0).astype(np.float32)},
    }


def test_randomization_is_cascading_and_spearman_matches_scipy():
    params = _params()
    images, _, labels = _data(b=3)
    seen = []

    def explain(p, x, y):
        seen.append(p)
        return x[..., 0] * np.asarray(p["out"]["w"])  # depends on the output layer only

    rho = randomization_check(
        explain, params, images, labels, layer_order=["out", "mid", "inp"], key=jax.random.key(0)
    )
    rho = np.asarray(rho)
    assert rho.shape == (3, 3) and len(seen) == 4
    ref = np.asarray(images[..., 0] * params["out"]["w"]).reshape(3, -1)
    for stage, p in enumerate(seen[1:]):
        stage_maps = np.asarray(images[..., 0] * p["out"]["w"]).reshape(3, -1)
        want = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(ref, stage_maps)]
        np.testing.assert_allclose(rho[stage], want, atol=1e-6)
    # "out" is randomized once at stage 0 and kept: the map, hence the correlation, no longer changes.
    np.testing.assert_array_equal(rho[0], rho[1])
    np.testing.assert_array_equal(rho[0], rho[2])
    assert np.all(np.abs(rho[0]) < 0.9)
    # Cascade: stage 0 touches "out" only, stage 1 adds "mid", stage 2 adds "inp".
    assert seen[1]["mid"] is params["mid"] and seen[1]["inp"] is params["inp"]
    assert seen[2]["inp"] is params["inp"] and seen[2]["mid"] is not params["mid"]
    assert seen[3]["inp"]["w"] is not params["inp"]["w"]
    # Same shape, dtype and root-mean-square; zero leaves stay zero; integer leaves are kept.
    for name in ("out", "mid", "inp"):
        old, new = np.asarray(params[name]["w"]), np.asarray(seen[3][name]["w"])
        assert new.shape == old.shape and new.dtype == old.dtype and not np.allclose(new, old)
        tol = 0.05 if old.size > 1000 else 0.5
        np.testing.assert_allclose(np.sqrt(np.mean(new**2)), np.sqrt(np.mean(old**2)), rtol=tol)
    assert abs(np.mean(seen[3]["mid"]["w"])) < 0.01  # zero mean, whatever the trained mean
    np.testing.assert_array_equal(seen[3]["out"]["b"], 0.0)
    np.testing.assert_array_equal(seen[3]["mid"]["step"], [0, 1, 2])


def test_a_map_that_ignores_the_weights_keeps_correlation_one():
    params = _params()
    images, _, labels = _data(b=2)
    explain = lambda p, x, y: np.round(x[..., 0]) + 0.0 * np.asarray(p["out"]["w"])  # ties; p unused
    rho = randomization_check(
        explain, params, images, labels, layer_order=["out", "mid", "inp"], key=jax.random.key(1)
    )
    np.testing.assert_allclose(rho, np.ones((3, 2)), atol=1e-6)


def test_layer_paths_reach_nested_layers():
    params = {"params": _params(), "batch_stats": {"var": np.ones(3, np.float32)}}
    images, _, labels = _data(b=2)
    explain = lambda p, x, y: x[..., 0] * np.asarray(p["params"]["inp"]["w"]) * p["batch_stats"]["var"].sum()
    rho = randomization_check(
        explain, params, images, labels, layer_order=[("params", "inp")], key=jax.random.key(2)
    )
    assert rho.shape == (1, 2) and np.all(rho < 0.9)


# ---------------------------------------------------------------------------------- errors


def _traced_predict(calls):
    def pred(x):
        calls.append(x.shape)
        return predict(x)

    return pred


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            dict(images=np.zeros((3, H, W), np.float32)),
            r"images must be \(B, H, W, C\); got shape \(3, 6, 5\)",
        ),
        (dict(images=np.zeros((3, H, W, C), np.int32)), r"images must have a floating dtype; got int32"),
        (dict(maps=np.zeros((3, W, H))), r"maps must be \(B, H, W\) = \(3, 6, 5\) .* got shape \(3, 5, 6\)"),
        (dict(labels=np.zeros((2,), np.int32)), r"labels must be \(B,\) = \(3,\); got shape \(2,\)"),
        (dict(labels=np.zeros((3,), np.float32)), r"labels must have an integer dtype; got float32"),
        (dict(labels=np.array([0, 3, 1])), r"labels must be in \[0, 3\) \(predict's K\); labels\[1\] = 3"),
        (dict(steps=0), r"steps must be an integer >= 1; got 0"),
        (dict(steps=2.5), r"steps must be an integer >= 1; got 2.5"),
        (dict(baseline="gauss"), r"baseline must be one of \('zero', 'mean', 'blur', 'road'\); got 'gauss'"),
        (dict(blur_sigma=0.0), r"blur_sigma must be a number > 0; got 0.0"),
        (dict(chunk_size=0), r"chunk_size must be an integer >= 1; got 0"),
        (dict(predict=lambda x: x.sum(axis=(1, 2, 3))), r"logits \(B, K\) with B = 3; got \(3,\)"),
        (dict(predict="model"), r"predict must be a callable images -> logits; got str"),
    ],
)
@pytest.mark.parametrize("fn", [deletion_curve, insertion_auc])
def test_bad_arguments_are_one_line_value_errors_before_compiling(fn, change, match):
    images, maps, labels = _data()
    calls = []
    args = dict(predict=_traced_predict(calls), images=images, maps=maps, labels=labels)
    kw = dict(steps=4, baseline="zero", blur_sigma=1.0, chunk_size=2)
    for k, v in change.items():
        (args if k in args else kw)[k] = v
    with pytest.raises(ValueError, match=match) as err:
        fn(args["predict"], args["images"], args["maps"], args["labels"], **kw)
    assert "\n" not in str(err.value)
    assert len(calls) <= 1 and all(s == (3, H, W, C) for s in calls)  # at most the abstract shape check


def test_other_functions_reject_bad_arguments():
    images, maps, labels = _data()
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\) = \(3, 6, 5\)"):
        average_drop(predict, images, maps[:, :3], labels)
    with pytest.raises(ValueError, match=r"labels must be \(B,\) = \(3,\)"):
        increase_in_confidence(predict, images, maps, labels[:2])
    with pytest.raises(ValueError, match=r"x and y must have the same shape .* got \(4,\) and \(5,\)"):
        spearman(jnp.zeros(4), jnp.zeros(5))
    explain = lambda p, x, y: x[..., 0]
    params, key = _params(), jax.random.key(0)
    bad = [
        (dict(layer_order=["out", "head"]), r"layer_order entry 'head' is not in params \(top-level keys"),
        (dict(layer_order=[]), r"layer_order must be a non-empty sequence of layer names; got \[\]"),
        (dict(layer_order="out"), r"layer_order must be a non-empty sequence of layer names; got 'out'"),
        (dict(layer_order=["out", "out"]), r"layer_order has a repeated layer: \['out', 'out'\]"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            randomization_check(explain, params, images, labels, key=key, **kw)
    with pytest.raises(ValueError, match=r"params must be a mapping of layers .* got list"):
        randomization_check(explain, [1], images, labels, layer_order=["out"], key=key)
    with pytest.raises(ValueError, match=r"explain must return maps \(B, \.\.\.\) with B = 3"):
        randomization_check(
            lambda p, x, y: x[0, ..., 0], params, images, labels, layer_order=["out"], key=key
        )


def test_benchmark_quick_run_checks_the_loop_and_writes_json(tmp_path):
    from benchmarks import faithfulness as bench

    out = tmp_path / "faithfulness.json"
    rows = bench.main(["--quick", "--out", str(out)])  # asserts every variant equals the per-image loop
    payload = json.loads(out.read_text())
    assert [r["variant"] for r in payload["results"]] == [r["variant"] for r in rows]
    assert {"platform", "cpu_model", "cores"} <= set(payload["machine"])
    assert len(payload["loadavg_before"]) == 3 and payload["environment"]["loadavg"] is not None
    assert all(r["max_abs_diff"] <= 1e-5 and r["images_per_s"] > 0 for r in rows)
