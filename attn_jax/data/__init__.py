"""Datasets (the embedded cluttered_digits TFDS builder), grain input pipelines and transforms::

    from attn_jax.data import make_pipeline, dataset_info
    meta = dataset_info("cluttered_digits", task="classification")   # num_classes, image_shape, ...
    loader = make_pipeline("cluttered_digits", "train", batch_size=128, train=True, seed=0)

See `make_pipeline` for the batch format and `ClutteredDigits` for the dataset's features.
"""

from attn_jax.data._paths import default_data_dir
from attn_jax.data.cluttered_digits import BUILDER_CONFIGS, ClutteredDigits, ClutteredDigitsConfig, prepare
from attn_jax.data.pipeline import DatasetMeta, dataset_info, make_pipeline, per_process_batch
from attn_jax.data.sources import ADAPTERS, TASKS, get_adapter, load_source

__all__ = [
    "ADAPTERS",
    "BUILDER_CONFIGS",
    "TASKS",
    "ClutteredDigits",
    "ClutteredDigitsConfig",
    "DatasetMeta",
    "dataset_info",
    "default_data_dir",
    "get_adapter",
    "load_source",
    "make_pipeline",
    "per_process_batch",
    "prepare",
]
