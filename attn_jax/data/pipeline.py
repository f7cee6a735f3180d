"""grain input pipelines over TFDS data sources, and dataset metadata for configs.

loader = make_pipeline("cluttered_digits", "train", batch_size=256, task="classification",
                       train=True, seed=0)
it = iter(loader)
batch = next(it)                # dict of NumPy arrays, PER-PROCESS batch = 256 / process_count
state = it.get_state()          # bytes; save with the checkpoint ...
it = iter(loader); it.set_state(state)   # ... and a resumed run sees exactly the same batches
"""

from __future__ import annotations

import dataclasses
import os

import grain

from attn_jax.data import cluttered_digits as cd
from attn_jax.data import transforms as T
from attn_jax.data import validate
from attn_jax.data._paths import default_data_dir
from attn_jax.data.column_batches import ColumnBatches, TakeShard
from attn_jax.data.memory_source import MemorySource
from attn_jax.data.sources import get_adapter, load_source


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """What a config needs to know about a dataset for one task.

    num_classes: classes the model predicts (segmentation: includes background = class 0).
    image_shape: (H, W, C) of pipeline images (None sizes when they vary and no image_size is given).
    num_examples: split -> count, or None when unknown without reading the prepared data.
    """

    name: str
    task: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    num_examples: dict[str, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def dataset_info(
    dataset: str | cd.ClutteredDigitsConfig,
    *,
    task: str = "classification",
    image_size: int | tuple[int, int] | None = None,
    data_dir: str | None = None,
) -> DatasetMeta:
    """Metadata of `dataset` for `task` (no building: cluttered_digits sizes come from its config;
    real datasets report num_examples only when prepared in data_dir)."""
    adapter = get_adapter(dataset, task)
    h, w, c = adapter.image_shape
    if image_size is not None:
        h, w = _size_pair(image_size)
    if adapter.config is not None:
        num_examples = dict(adapter.config.num_examples)
    else:
        num_examples = _prepared_num_examples(adapter.tfds_name, data_dir)
    num_classes = adapter.tasks[task]
    return DatasetMeta(adapter.name, task, num_classes, (h, w, c), num_examples, adapter.mean, adapter.std)


def _prepared_num_examples(tfds_name: str, data_dir: str | None) -> dict[str, int] | None:
    import tensorflow_datasets as tfds

    from attn_jax.data._paths import default_data_dir

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir or default_data_dir())
        if not builder.is_prepared():
            return None
        return {name: split.num_examples for name, split in builder.info.splits.items()}
    except Exception:  # metadata is best effort; the pipeline itself raises a clear error
        return None


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return int(h), int(w)


def _shards(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if (shard_index is None) != (shard_count is None):
        raise ValueError(f"pass both shard_index and shard_count or neither: {shard_index=}, {shard_count=}")
    if shard_index is None:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index=}, {shard_count=}")
    return shard_index, shard_count


def per_process_batch(batch_size: int, shard_count: int, num_devices: int | None = None) -> int:
    """Global batch / process count; ValueError unless it splits evenly over processes and devices."""
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    if batch_size < 1 or batch_size % shard_count or batch_size % num_devices:
        raise ValueError(
            f"batch_size={batch_size} (global) must be positive and divisible by the process count "
            f"({shard_count}) and the device count ({num_devices})"
        )
    return batch_size // shard_count


WHOLE_BATCH_READS = True  # column sources read whole batches (ColumnBatches); False: record by record

AUGMENTATIONS = ("crop", "flip", "affine")  # pad-and-crop, horizontal flip, zoom +-10% and rotation +-10 deg


def _operations(adapter, task, train, image_size, max_boxes, augment, batch):
    """Per-example Prepare, Batch, then batch-level augmentation (train only), normalisation, padding."""
    size = None if image_size is None else _size_pair(image_size)
    if size is None and adapter.image_shape[0] is None:
        raise ValueError(f"dataset {adapter.name!r} has images of varying size: pass image_size")
    augment = adapter.augment if augment is None else tuple(augment)
    unknown = set(augment) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augment {sorted(unknown)}; known: {list(AUGMENTATIONS)}")
    ops = [
        T.Prepare(validate.identity, task, size, max_boxes),  # CheckedSource canonicalises and checks
        grain.transforms.Batch(batch, drop_remainder=train),
    ]
    return ops + _batch_operations(adapter, train, augment, batch)


def _batch_operations(adapter, train: bool, augment: tuple[str, ...], batch: int) -> list:
    """Whole-batch transforms: augmentation (train only), normalisation, padding of a short eval batch."""
    ops = []
    if train and augment:
        ops.append(T.AugmentBatch(crop="crop" in augment, flip="flip" in augment, affine="affine" in augment))
    ops.append(T.NormalizeBatch(adapter.mean, adapter.std))
    if not train:
        ops.append(T.PadBatch(batch))
    return ops


def _read_options(source, read_threads: int, batch: int) -> grain.ReadOptions:
    """Prefetch threads for file-backed sources; none for an in-memory one, where reading a record
    costs microseconds and the thread hand-off alone would double the per-batch time."""
    if isinstance(getattr(source, "source", source), MemorySource):
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch, 16))


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside `absl.app.run` they were never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(
    dataset: str | cd.ClutteredDigitsConfig,
    split: str,
    *,
    batch_size: int,
    task: str = "classification",
    train: bool = False,
    seed: int = 0,
    data_dir: str | None = None,
    num_epochs: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    max_boxes: int = 8,
    augment: tuple[str, ...] | None = None,
    worker_count: int = 0,
    read_threads: int = 4,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_devices: int | None = None,
) -> grain.DataLoader:
    """A grain DataLoader over `dataset`/`split` whose iterator yields dict batches of NumPy arrays.

    batch_size is GLOBAL; each process gets batch_size / shard_count examples per batch (shards default to
    jax.process_index() / jax.process_count()); it must divide by the device count (num_devices, default
    jax.device_count()). Batch keys: image float32 (b, H, W, C) normalised; label int32 (b,); detection
    adds boxes float32 (b, max_boxes, 4) (ymin, xmin, ymax, xmax in [0, 1]), box_labels int32 (b, max_boxes),
    box_valid bool (b, max_boxes); segmentation adds mask int32 (b, H, W) (0 = background, class + 1).
    train=True: shuffled with `seed`, augmented (`augment`, default per dataset), repeats num_epochs
    (None = forever), drops the last partial batch. train=False: fixed order, one epoch by default, no
    augmentation, the last batch zero-padded and every batch carries "valid" bool (b,). Shards are equal:
    with shard_count > 1, up to shard_count - 1 trailing records are left out so all processes step together.
    cluttered_digits at its own image size is read as whole global batches from its memory-mapped columns
    (attn_jax.data.column_batches: about 100x less Python per batch); each process takes its share of
    every global batch, so batches do not depend on the process count.
    Iterator state: `it.get_state()` / `it.set_state(state)` resume exactly (with the same worker_count:
    worker_count > 0 runs the transforms in grain worker processes). cluttered_digits is built
    into data_dir on first use; real datasets must be prepared (FileNotFoundError says how).
    """
    adapter = get_adapter(dataset, task)
    index, count = _shards(shard_index, shard_count)
    batch = per_process_batch(batch_size, count, num_devices)
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    if worker_count < 0 or read_threads < 1:
        raise ValueError(f"need worker_count >= 0 and read_threads >= 1, got {worker_count}, {read_threads}")
    ops = _operations(adapter, task, train, image_size, max_boxes, augment, batch)
    raw = load_source(adapter, split, data_dir)
    location = getattr(raw, "location", None) or os.path.join(
        data_dir or default_data_dir(), adapter.tfds_name
    )
    where = f"dataset {adapter.name!r} split {split!r} ({location})"
    columns = adapter.config is not None and isinstance(raw, MemorySource)  # canonical columns
    source = validate.CheckedSource(raw, adapter.canonicalize, task, adapter.tasks[task], where, columns)
    size = None if image_size is None else _size_pair(image_size)
    if columns and WHOLE_BATCH_READS and size in (None, tuple(adapter.image_shape[:2])):
        augment = augment if augment is not None else adapter.augment
        options = dict(seed=seed, num_epochs=num_epochs, max_boxes=max_boxes, worker_count=worker_count)
        return _column_pipeline(raw, task, train, batch * count, (index, count), augment, adapter, **options)
    shard_options = grain.sharding.ShardOptions(index, count, drop_remainder=True)
    epochs = num_epochs if (num_epochs is not None or train) else 1
    read_options = _read_options(source, read_threads, batch)
    return _loader(source, ops, shard_options, train, epochs, seed, worker_count, read_options)


def _loader(source, ops, shard_options, shuffle, num_epochs, seed, worker_count, read_options):
    """grain.DataLoader over `source` (records in sampler order, `ops` applied in order)."""
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    if worker_count > 0:
        _mark_absl_flags_parsed()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=ops,
        worker_count=worker_count,
        read_options=read_options,
    )


def _column_pipeline(raw, task, train, global_batch, shard, augment, adapter, *, seed, num_epochs, max_boxes,
                     worker_count):  # fmt: skip
    """The loader over ColumnBatches: global batches read as one gather per column, augmented and
    normalised as a whole, then cut to this process's share (shard = (index, count))."""
    source = ColumnBatches(
        raw, task, batch_size=global_batch, train=train, seed=seed, num_epochs=num_epochs, max_boxes=max_boxes
    )
    ops = _batch_operations(adapter, train, augment, global_batch) + [TakeShard(*shard)]
    no_threads = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # a batch is one gather
    return _loader(source, ops, grain.sharding.NoSharding(), False, 1, seed, worker_count, no_threads)
