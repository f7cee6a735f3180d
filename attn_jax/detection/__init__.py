"""Anchors, box coding, target matching, detection losses and NMS, all in JAX."""
