"""Attention-map capture, overlays and post-hoc explanations (Grad-CAM, rollout).

`capture_attention(model, variables, images)` returns path -> AttentionMap at image resolution;
`save_overlay` / `attention_grid` draw them; `python -m attn_jax.viz` is the command line.
"""

from attn_jax.viz.capture import AttentionMap, capture_attention, infer_kind, upsample
from attn_jax.viz.draw import attention_grid, overlay_rgb, save_overlay
from attn_jax.viz.explain import attention_rollout, conv_layers, grad_cam, last_conv, rollout_map

__all__ = [
    "AttentionMap",
    "attention_grid",
    "attention_rollout",
    "capture_attention",
    "conv_layers",
    "grad_cam",
    "last_conv",
    "infer_kind",
    "overlay_rgb",
    "rollout_map",
    "save_overlay",
    "upsample",
]
