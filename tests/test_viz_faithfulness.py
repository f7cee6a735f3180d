"""Explanations against hand gradients and known answers; scores ordered where the model guarantees it;
`python -m attn_jax.viz faithfulness` end to end on a tiny trained run."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats

from attn_jax.viz.__main__ import main as viz_main
from attn_jax.viz.faithfulness import (
    METHODS,
    METRICS,
    attention_map,
    explain_all,
    gradient_x_input,
    integrated_gradients,
    mean_ci,
    score_maps,
)

HW = 16
REGION = (3, 9, 5, 11)  # rows r0:r1, cols c0:c1 the logit reads


class RegionNet(nn.Module):
    """A 1x1 conv "backbone" with kernel 1 (A = relu(x)), logit 0 = w * mean of A over REGION, logit 1 its
    negative. sows: "spatial" sows A average-pooled 2x2 (an 8x8 map), "channel" sows (B, 1), None nothing."""

    w: float = 3.0
    sows: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        a = nn.relu(nn.Conv(1, (1, 1), use_bias=False, kernel_init=nn.initializers.ones, name="backbone")(x))
        if self.sows == "spatial":
            self.sow("intermediates", "attention_map", nn.avg_pool(a, (2, 2), (2, 2))[..., 0])
        elif self.sows == "channel":
            self.sow("intermediates", "attention_map", a.mean(axis=(1, 2)))
        r0, r1, c0, c1 = REGION
        logit = self.w * a[:, r0:r1, c0:c1, 0].mean(axis=(1, 2))
        return jnp.stack([logit, -logit], axis=-1)


def _region_mask():
    r0, r1, c0, c1 = REGION
    m = np.zeros((HW, HW), bool)
    m[r0:r1, c0:c1] = True
    return m


def _region_images(b=2, seed=0):
    """(b, 16, 16, 1): 1.0 on REGION, uniform in [0.1, 1) elsewhere (all positive: relu is the identity)."""
    x = np.random.default_rng(seed).uniform(0.1, 1.0, (b, HW, HW, 1)).astype(np.float32)
    x[:, _region_mask()] = 1.0
    return jnp.asarray(x)


def test_gradient_x_input_equals_the_hand_gradient_of_linear_and_quadratic_models():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    w = rng.normal(size=(4, 5, 2, 3)).astype(np.float32)
    targets = np.array([0, 2, 1])

    def linear(images):  # logits_k = sum_hwc x * w[..., k]: d logit_k / d x = w[..., k]
        return jnp.einsum("bhwc,hwck->bk", images, w)

    want = np.einsum("bhwc,bhwc->bhw", x, np.moveaxis(w[..., targets], -1, 0))
    got = gradient_x_input(linear, jnp.asarray(x), jnp.asarray(targets))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    a = rng.uniform(0.5, 2.0, (4, 5, 2)).astype(np.float32)

    def quadratic(images):  # logit 1 = sum a x^2: gradient 2 a x, gradient x input 2 a x^2
        q = jnp.sum(a * images**2, axis=(1, 2, 3))
        return jnp.stack([jnp.zeros_like(q), q], axis=1)

    got = gradient_x_input(quadratic, jnp.asarray(x), jnp.ones(3, jnp.int32))
    np.testing.assert_allclose(got, np.sum(2 * a * x**2, axis=-1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"targets must be \(B,\) = \(3,\)"):
        gradient_x_input(linear, jnp.asarray(x), jnp.zeros(2, jnp.int32))


def test_integrated_gradients_completeness_on_a_nonlinear_model():
    rng = np.random.default_rng(2)
    w1 = jnp.asarray(rng.normal(size=(4 * 4 * 2, 16)) / 4.0, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)

    def mlp(images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w1) @ w2

    x = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
    targets = jnp.array([2, 0])
    pick = lambda logits: np.asarray(logits)[np.arange(2), np.asarray(targets)]
    for baseline in (None, jnp.full((1, 4, 4, 1), 0.3)):
        x0 = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape)
        gap = pick(mlp(x)) - pick(mlp(x0))  # completeness: the attributions sum to f(x) - f(x')
        # 60 steps in chunks of 8: the last chunk is padded with zero-weight points
        ig = integrated_gradients(mlp, x, targets, steps=60, baseline=baseline, chunk_size=8)
        assert ig.shape == (2, 4, 4)
        np.testing.assert_allclose(np.asarray(ig).sum(axis=(1, 2)), gap, rtol=2e-3, atol=2e-3)
        assert np.all(np.abs(gap) > 0.05)  # a gap the test can see
    coarse = integrated_gradients(mlp, x, targets, steps=1)  # one midpoint: visibly off the gap
    assert np.max(np.abs(np.asarray(coarse).sum(axis=(1, 2)) - (pick(mlp(x)) - pick(mlp(0 * x))))) > 1e-2
    with pytest.raises(ValueError, match="steps must be an integer >= 1; got 0"):
        integrated_gradients(mlp, x, targets, steps=0)
    with pytest.raises(ValueError, match="baseline must broadcast"):
        integrated_gradients(mlp, x, targets, baseline=jnp.zeros((3, 4, 4, 2)))


def test_explain_all_matches_hand_answers_on_a_region_model(upsample2x_bilinear):
    model = RegionNet(sows="spatial")
    x = _region_images()
    variables = model.init(jax.random.key(0), x)
    targets = jnp.array([0, 1])
    digit = np.broadcast_to(_region_mask(), (2, HW, HW))
    maps, notes = explain_all(model, variables, x, targets, ig_steps=4, key=jax.random.key(5), digit=digit)
    assert list(maps) == list(METHODS)
    xs = np.asarray(x)[..., 0]
    # the sown 8x8 map (A pooled 2x2), upsampled bilinearly
    pooled = xs.reshape(2, 8, 2, 8, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(maps["attention"], upsample2x_bilinear(pooled), rtol=1e-5)
    assert notes["attention"] == "spatial map sown by <root>"
    np.testing.assert_array_equal(maps["inverted_attention"], -maps["attention"])  # lowest pixels first
    # Grad-CAM at the conv: alpha = mean of d logit / d A = +-w / HW, cam = relu(alpha A) / max
    np.testing.assert_allclose(maps["grad_cam"][0], xs[0] / xs[0].max(), rtol=1e-5)
    np.testing.assert_allclose(maps["grad_cam"][1], 0.0)  # class 1's channel weight is negative
    assert notes["grad_cam"] == "layer backbone"
    # d logit_0 / d x = w / |R| on REGION (x > 0), 0 elsewhere; class 1 the negative
    hand = 3.0 / _region_mask().sum() * xs * _region_mask() * np.array([1.0, -1.0])[:, None, None]
    np.testing.assert_allclose(maps["gradient_x_input"], hand, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps["integrated_gradients"], hand, rtol=1e-5, atol=1e-7)  # linear on the path
    np.testing.assert_array_equal(maps["oracle"], digit.astype(np.float32))
    np.testing.assert_array_equal(maps["random"], jax.random.uniform(jax.random.key(5), (2, HW, HW)))
    assert not np.array_equal(maps["random"][0], maps["random"][1])

    no_oracle, notes = explain_all(model, variables, x, targets, ig_steps=4)
    assert "oracle" not in no_oracle and notes["oracle"] == "the dataset has no masks"


def test_channel_only_and_map_free_models_have_no_attention_map():
    x = _region_images()
    for sow, reason in (("channel", "channel-only"), (None, "sows no attention map")):
        model = RegionNet(sows=sow)
        variables = model.init(jax.random.key(0), x)
        amap, note = attention_map(model, variables, x)
        assert amap is None and reason in note


def test_oracle_is_the_most_faithful_map_of_a_model_reading_one_region():
    """The logit depends only on REGION, where every pixel is 1: removing (inserting) a REGION pixel lowers
    (raises) it by the same amount and any other pixel changes nothing, so the map ranking REGION first
    has the lowest deletion curve and the highest insertion curve at every step, and masking with it
    changes nothing (drop 0, no increase)."""
    model = RegionNet(w=3.0)
    x = _region_images(b=3)
    variables = model.init(jax.random.key(0), x)
    predict = lambda images: model.apply(variables, images)
    targets = jnp.zeros(3, jnp.int32)
    oracle = jnp.broadcast_to(jnp.asarray(_region_mask(), jnp.float32), (3, HW, HW))
    kw = {"steps": 16, "deletion_baseline": "zero", "insertion_baseline": "zero"}
    best = score_maps(predict, x, oracle, targets, **kw)
    others = {
        "random": jax.random.uniform(jax.random.key(0), (3, HW, HW)),
        "inverse oracle": 1.0 - oracle,
        "shifted oracle": jnp.roll(oracle, 3, axis=2),  # half of REGION first
    }
    for name, maps in others.items():
        got = score_maps(predict, x, maps, targets, **kw)
        assert np.all(best["deletion_curve"] <= got["deletion_curve"] + 1e-6), name
        assert np.all(best["insertion_curve"] >= got["insertion_curve"] - 1e-6), name
        assert np.all(best["deletion_auc"] < got["deletion_auc"] - 0.01), name
        assert np.all(best["insertion_auc"] > got["insertion_auc"] + 0.01), name
        assert np.all(best["average_drop"] <= got["average_drop"]), name
    np.testing.assert_allclose(best["average_drop"], 0.0, atol=1e-4)
    np.testing.assert_array_equal(best["increase_in_confidence"], 0.0)
    # the oracle's deletion curve by hand: k_s REGION pixels gone, logit w (1 - k_s/|R|), p = sigmoid(2 logit)
    area = _region_mask().sum()
    k = np.minimum([round(s * HW * HW / 16) for s in range(17)], area)
    want = 1 / (1 + np.exp(-2 * 3.0 * (1 - k / area)))
    np.testing.assert_allclose(best["deletion_curve"][0], want, rtol=1e-5)


def test_mean_ci_is_the_student_t_interval():
    x = np.array([0.2, 0.5, 0.4, 0.9, 0.1])
    half = stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    got = mean_ci(x)
    assert got["n"] == 5 and got["mean"] == pytest.approx(0.42)
    np.testing.assert_allclose(got["ci95"], [0.42 - half, 0.42 + half], rtol=1e-12)
    assert mean_ci([0.3, 0.3, 0.3])["ci95"] == [0.3, 0.3]  # no spread: no NaN
    assert mean_ci([0.7])["ci95"] is None


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    from attn_jax.train import loop
    from attn_jax.viz.runs import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "experiments", "configs", "classification.py") + ":spatial,tiny")
    config.data.dir, config.progress, config.png_examples = data_dir, False, 0
    config.num_train_steps, config.schedule.warmup_steps, config.num_devices = 2, 0, 1
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    workdir = str(tmp_path_factory.mktemp("faithfulness_run"))
    loop.train_and_evaluate(config, workdir)
    return workdir


def test_command_scores_every_method_of_a_trained_run(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["faithfulness", "--workdir", tiny_run, "--examples", "5", "--steps", "4", "--ig-steps", "2",
            "--batch-size", "4", "--out", out]  # fmt: skip
    viz_main(argv)  # 5 images: a full batch of 4 and a padded one
    printed = capsys.readouterr().out
    with open(os.path.join(out, "faithfulness.json")) as f:
        report = json.load(f)
    assert list(report["methods"]) == list(METHODS)  # spatial attention and the digit mask: all apply
    assert report["examples"] == 5 and report["family"] == "spatial" and report["steps"] == 4
    assert 0.0 <= report["accuracy"] <= 1.0
    for name, row in report["methods"].items():
        for metric in METRICS:
            stat = row[metric]
            assert stat["n"] == 5 and np.isfinite(stat["mean"]) and np.all(np.isfinite(stat["ci95"])), name
            assert stat["ci95"][0] <= stat["mean"] + 1e-12 and stat["mean"] <= stat["ci95"][1] + 1e-12
        assert 0.0 <= row["deletion_auc"]["mean"] <= 1.0 and 0.0 <= row["average_drop"]["mean"] <= 100.0
        for kind in ("deletion_curve", "insertion_curve"):
            curve = np.asarray(row[kind])
            assert curve.shape == (5,) and np.all((curve >= 0) & (curve <= 1)), (name, kind)
        # both curves end where the other starts: the full image and the baseline are the same for all maps
        assert row["deletion_curve"][0] == pytest.approx(report["methods"]["random"]["deletion_curve"][0])
    assert {"command", "date", "machine"} <= set(report["meta"])
    with open(os.path.join(out, "faithfulness.md")) as f:
        table = f.read()
    assert table.count("| oracle | ") == 1 and table.splitlines()[0].startswith("| method | deletion AUC")
    assert "| integrated_gradients | " in printed
    assert mpimg.imread(os.path.join(out, "faithfulness.png")).shape[1] > 500


@pytest.mark.parametrize(
    "args, message",
    [
        (["--examples", "0"], "--examples must be >= 1; got 0"),
        (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
        (["--target", "truth"], "--target must be one of predicted, label; got 'truth'"),
    ],
)
def test_command_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        viz_main(["faithfulness", "--workdir", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    with pytest.raises(SystemExit, match="2"):
        viz_main(["faithfulness", "--workdir", str(tmp_path / "absent")])
    assert "is not a directory" in capsys.readouterr().err


def test_the_no_attention_baselines_constant_map_is_not_scored():
    """attention="none" is an identity that sows ones: a map that ranks no pixel above another."""
    from attn_jax.models import AttentionClassifier
    from attn_jax.nn import SmallCNN

    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)
    for attention, constant in (("none", True), ("spatial", False)):
        model = AttentionClassifier(SmallCNN(features=(4, 8), stride=4), num_classes=3, attention=attention)
        variables = model.init(jax.random.key(0), x, train=False)
        amap, note = attention_map(model, variables, x)
        assert (amap is None) == constant, attention
        assert ("constant (no attention)" in note) == constant
