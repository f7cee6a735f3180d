"""The task models: classifier, detector and segmenter, each gating backbone features with attention, and
the reader, whose LSTM decoder queries additive attention over the features at every output step.

The first three are called as ``model.apply(variables, images, train=bool)`` with NHWC images and take
``attention=`` (a name from `attn_jax.nn.available_attention()`) and ``attention_kwargs=``;
`AttentionReader` as ``model.apply(variables, images, tokens, train=bool)`` (teacher forcing), with
``method="decode"`` / ``"beam_search"`` to read.
"""

from attn_jax.models.classifier import AttentionClassifier
from attn_jax.models.detector import AttentionDetector
from attn_jax.models.reader import AttentionReader, Decoded, ReaderStep
from attn_jax.models.segmenter import AttentionSegmenter

__all__ = [
    "AttentionClassifier",
    "AttentionDetector",
    "AttentionReader",
    "AttentionSegmenter",
    "Decoded",
    "ReaderStep",
]
