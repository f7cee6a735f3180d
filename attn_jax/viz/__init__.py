"""Attention-map capture, overlays and post-hoc explanations (Grad-CAM, rollout)."""
