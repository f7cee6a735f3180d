"""The three task models: classifier, detector and segmenter, each gating backbone features with attention.

All are called as ``model.apply(variables, images, train=bool)`` with NHWC images and take
``attention=`` (a name from `attn_jax.nn.available_attention()`) and ``attention_kwargs=``.
"""

from attn_jax.models.classifier import AttentionClassifier
from attn_jax.models.detector import AttentionDetector
from attn_jax.models.segmenter import AttentionSegmenter

__all__ = ["AttentionClassifier", "AttentionDetector", "AttentionSegmenter"]
