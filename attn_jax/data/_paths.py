"""Where TFDS data lives: $ATTN_JAX_DATA_DIR, else ~/tensorflow_datasets (always overridable by argument)."""

from __future__ import annotations

import os


def default_data_dir() -> str:
    """The directory where datasets live unless a ``data_dir`` argument says otherwise.

    Returns:
      ``$ATTN_JAX_DATA_DIR`` if set (and not empty), else ``~/tensorflow_datasets`` (TFDS's own default),
      with ``~`` expanded.

    Examples:
      >>> import os
      >>> from unittest import mock
      >>> with mock.patch.dict(os.environ, {"ATTN_JAX_DATA_DIR": "/data/tfds"}):
      ...     default_data_dir()
      '/data/tfds'
    """
    return os.environ.get("ATTN_JAX_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
