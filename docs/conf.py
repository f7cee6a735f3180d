"""Sphinx configuration of the attn_jax documentation (built by tests/test_docs.py with -W -n)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

project = "attn_jax"
author = "attn_jax developers"
copyright = "2026, attn_jax developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "attn_jax"

autodoc_default_options = {"members": True, "undoc-members": True, "no-value": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Nitpicky for the library's own names: every cross-reference into attn_jax must resolve. The site is
# built offline (no intersphinx), so references into other packages are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|jnp|flax|nn|np|numpy|optax|orbax|grain|ml_collections|tfds|chex|etils)(\..*)?"),
    (r"py:.*", r"(tensorflow_datasets|file_adapters|utils|collections\.abc|typing)\..*"),
    (r"py:.*", r"(Array|ArrayLike|PRNGKey|Callable|Sequence|Mapping|Iterable|Iterator|Any|Module)"),
]
# Library names that public signatures or docstrings mention but that no __all__ exports (yet).
nitpick_ignore = [
    ("py:class", "attn_jax.data._synth.SynthSpec"),  # ClutteredDigitsConfig.spec
    ("py:class", "attn_jax.data.sources.Adapter"),  # get_adapter / load_source
    ("py:exc", "CheckpointMismatchError"),  # attn_jax.train.checkpoint; Raises of train_and_evaluate
    ("py:exc", "WorkdirInUseError"),  # attn_jax.train.workdir_lock
    ("py:exc", "DiskFullError"),  # attn_jax.train.checkpoint
]
