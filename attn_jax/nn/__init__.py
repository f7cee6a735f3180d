"""Flax linen attention modules, a registry of them by name, and backbones."""
