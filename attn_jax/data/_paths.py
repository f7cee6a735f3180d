"""Where TFDS data lives: $ATTN_JAX_DATA_DIR, else ~/tensorflow_datasets (always overridable by argument)."""

from __future__ import annotations

import os


def default_data_dir() -> str:
    """$ATTN_JAX_DATA_DIR if set, else ~/tensorflow_datasets (TFDS's own default)."""
    return os.environ.get("ATTN_JAX_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
