"""Attention-map capture, overlays, post-hoc explanations (Grad-CAM, rollout, gradient x input,
integrated gradients) and their faithfulness scores.

`capture_attention(model, variables, images)` returns path -> AttentionMap at image resolution;
`save_overlay` / `attention_grid` draw them; `explain_all` / `score_maps` compare explanations with the
faithfulness metrics of `attn_jax.metrics`; `python -m attn_jax.viz` is the command line.
"""

from attn_jax.viz.capture import AttentionMap, capture_attention, infer_kind, upsample
from attn_jax.viz.draw import BoxSet, attention_grid, overlay_rgb, save_overlay
from attn_jax.viz.explain import attention_rollout, conv_layers, grad_cam, last_conv, rollout_map
from attn_jax.viz.faithfulness import explain_all, gradient_x_input, integrated_gradients, score_maps

__all__ = [
    "AttentionMap",
    "BoxSet",
    "attention_grid",
    "attention_rollout",
    "capture_attention",
    "conv_layers",
    "explain_all",
    "grad_cam",
    "gradient_x_input",
    "infer_kind",
    "integrated_gradients",
    "last_conv",
    "overlay_rgb",
    "rollout_map",
    "save_overlay",
    "score_maps",
    "upsample",
]
