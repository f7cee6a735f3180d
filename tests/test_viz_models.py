"""Capture and Grad-CAM on every registered attention family of the classifier."""

import jax
import numpy as np
import pytest

from attn_jax.nn import available_attention
from attn_jax.train.factory import build_model
from attn_jax.viz.capture import capture_attention
from attn_jax.viz.explain import grad_cam, last_conv
from attn_jax.viz.runs import classifier_config, init_variables


def classifier(family, widths, stride):
    """The classifier built by the train package's one model builder (no BatchNorm axis)."""
    return build_model(classifier_config(family, widths=widths, stride=stride), bn_axis_name=None)


KIND = {"se": "channel", "eca": "channel", "additive": "query", "nonlocal": "query"}


@pytest.mark.parametrize("family", available_attention())
def test_capture_every_family(family):
    model = classifier(family, widths=(4, 8, 8, 8), stride=8)
    variables = init_variables(model, (32, 32, 1))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    maps, logits = capture_attention(model, variables, images, train=False, with_output=True)
    assert logits.shape == (2, 10) and list(maps) == ["attention"]
    m = maps["attention"]
    assert m.kind == KIND.get(family, "spatial")
    if m.kind == "channel":
        assert m.image is None and m.raw.shape == (2, 8)
    else:
        assert m.grid == (4, 4) and m.image.shape == (2, 32, 32) and np.isfinite(m.image).all()


def test_grad_cam_on_the_classifier_backbone():
    model = classifier("spatial", widths=(4, 8, 8, 8), stride=8)
    variables = init_variables(model, (32, 32, 1))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    layer = last_conv(model, variables, images)
    assert layer == "backbone/conv3_0"
    cam, cls = grad_cam(model, variables, images, layer, train=False)
    assert cam.shape == (2, 32, 32) and cls.shape == (2,) and np.isfinite(cam).all()
    with pytest.raises(ValueError, match="no conv layer under"):
        last_conv(model, variables, images, under="decoder")
