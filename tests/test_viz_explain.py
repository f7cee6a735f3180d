"""Grad-CAM finds the evidence for a class; HiResCAM the region a logit reads; rollout composes maps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from viz_toys import ToyClassifier

from attn_jax.viz.capture import capture_attention
from attn_jax.viz.explain import attention_rollout, conv_layers, grad_cam, rollout_map


class TwoChannelNet(nn.Module):
    """Identity 1x1 conv, then logit 0 = w . (features pooled over `region` or the whole image)."""

    region: tuple[int, int, int, int] | None = None  # rows r0:r1, cols c0:c1 the logit reads
    weights: tuple[float, float] = (1.0, -1.0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        ident = lambda key, shape, dtype=jnp.float32: jnp.eye(2, dtype=dtype).reshape(shape)
        f = nn.relu(nn.Conv(2, (1, 1), kernel_init=ident, name="conv")(x))
        if self.region is not None:
            r0, r1, c0, c1 = self.region
            f = f[:, r0:r1, c0:c1]
        logit = f.mean(axis=(1, 2)) @ jnp.asarray(self.weights)
        return jnp.stack([logit, -logit], axis=-1)


def _blobs(channels):
    """(1, 16, 16, 2) image: a 3x3 blob at rows/cols 2..4 and one at 11..13, in the given channels."""
    x = np.zeros((1, 16, 16, 2), np.float32)
    x[0, 2:5, 2:5, channels[0]] = 1.0
    x[0, 11:14, 11:14, channels[1]] = 1.0
    return jnp.asarray(x)


def _peak(cam):
    return np.unravel_index(int(np.argmax(cam[0])), cam.shape[1:])


def test_grad_cam_peaks_on_the_class_evidence():
    model = TwoChannelNet()  # channel 0 is evidence for class 0, channel 1 against it
    x = _blobs((0, 1))
    variables = model.init(jax.random.key(0), x)
    cam, cls = grad_cam(model, variables, x, "conv", class_index=0)
    assert int(cls[0]) == 0 and cam.shape == (1, 16, 16)
    assert 2 <= _peak(cam)[0] <= 4 and 2 <= _peak(cam)[1] <= 4
    assert float(cam[0, 12, 12]) == 0.0 and float(cam.max()) == pytest.approx(1.0)
    cam1, _ = grad_cam(model, variables, x, "conv", class_index=1)  # class 1: the other blob
    assert 11 <= _peak(cam1)[0] <= 13 and float(cam1[0, 3, 3]) == 0.0
    cam_pred, pred = grad_cam(model, variables, x, "conv")  # tie broken by argmax -> class 0
    np.testing.assert_allclose(cam_pred, cam if int(pred[0]) == 0 else cam1)


def test_hirescam_peaks_in_the_region_the_logit_depends_on():
    model = TwoChannelNet(region=(0, 8, 0, 8), weights=(1.0, 0.0))
    x = _blobs((0, 0))  # identical blobs, only the top-left one is read
    variables = model.init(jax.random.key(0), x)
    cam, _ = grad_cam(model, variables, x, "conv", class_index=0, variant="hirescam")
    assert 2 <= _peak(cam)[0] <= 4 and 2 <= _peak(cam)[1] <= 4
    assert float(cam[0, 12, 12]) == 0.0
    # plain Grad-CAM weights channels globally: it cannot tell the two identical blobs apart
    plain, _ = grad_cam(model, variables, x, "conv", class_index=0)
    assert float(plain[0, 3, 3]) == pytest.approx(float(plain[0, 12, 12]))


def test_grad_cam_any_conv_layer_and_errors():
    model = ToyClassifier()
    x = jax.random.normal(jax.random.key(0), (2, 16, 12, 1))
    variables = model.init(jax.random.key(1), x)
    layers = conv_layers(model, variables, x)
    assert layers == ["conv", "spatial/Conv_0"]
    for layer in layers:
        cam, cls = grad_cam(model, variables, x, layer, class_index=jnp.array([0, 2]))
        assert cam.shape == (2, 16, 12) and np.isfinite(cam).all() and list(cls) == [0, 2]
        assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="conv layers"):
        grad_cam(model, variables, x, "nope")
    with pytest.raises(ValueError, match="variant"):
        grad_cam(model, variables, x, "conv", variant="cam++")


def test_rollout_composes_layers():
    rng = np.random.default_rng(0)
    a1, a2 = (jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 6, 6))), -1) for _ in range(2))
    read = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 1, 6))), -1)
    eye = np.eye(6)
    expected = read @ (0.5 * a2 + 0.5 * eye) @ (0.5 * a1 + 0.5 * eye)
    out = attention_rollout([a1, a2, read])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    ident = attention_rollout([jnp.broadcast_to(eye, (2, 4, 6, 6))], residual=0.0)  # heads averaged
    np.testing.assert_allclose(ident, np.broadcast_to(eye, (2, 6, 6)), atol=1e-6)
    with pytest.raises(ValueError, match="only the last"):
        attention_rollout([read, a1])
    with pytest.raises(ValueError, match="tokens"):
        attention_rollout([a1, jnp.ones((2, 5, 5)) / 5])


def test_rollout_map_of_captured_model():
    model = ToyClassifier()
    x = jax.random.normal(jax.random.key(0), (2, 16, 12, 1))
    maps = capture_attention(model, model.init(jax.random.key(1), x), x)
    out = rollout_map(maps, (16, 12))
    assert out.shape == (2, 16, 12) and np.isfinite(out).all()
