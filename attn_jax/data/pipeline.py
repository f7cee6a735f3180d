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
    """What a config needs to know about a dataset for one task, as `dataset_info` returns it.

    Examples:
      >>> meta = dataset_info("mnist", data_dir="/nonexistent")  # reads nothing
      >>> meta.num_classes, meta.image_shape, meta.num_examples  # num_examples: mnist is not prepared there
      (10, (28, 28, 1), None)
    """

    name: str
    """The dataset's name (an `ADAPTERS` key, or ``cluttered_digits/<name>`` of a custom config)."""
    task: str
    """The task, one of `TASKS`."""
    num_classes: int
    """Classes the model predicts (segmentation counts the background as class 0)."""
    image_shape: tuple[int | None, int | None, int]
    """(H, W, C) of the pipeline's images; H and W are None when the stored sizes vary and no
    ``image_size`` was given."""
    num_examples: dict[str, int] | None
    """Split -> number of examples, or None when unknown without reading the prepared data."""
    mean: tuple[float, ...]
    """Per-channel mean that normalisation subtracts, on images scaled to [0, 1]."""
    std: tuple[float, ...]
    """Per-channel standard deviation that normalisation divides by."""


def dataset_info(
    dataset: str | cd.ClutteredDigitsConfig,
    *,
    task: str = "classification",
    image_size: int | tuple[int, int] | None = None,
    data_dir: str | None = None,
) -> DatasetMeta:
    """Metadata of a dataset for one task, without building or reading it.

    cluttered_digits sizes come from its config; a real dataset reports ``num_examples`` only when it is
    prepared in ``data_dir``.

    Args:
      dataset: a name of `ADAPTERS` or a `ClutteredDigitsConfig`.
      task: one of `TASKS` that the dataset serves.
      image_size: the size the pipeline resizes to (an int for squares, or (H, W)); None: the stored size.
      data_dir: the TFDS directory (None: `default_data_dir`).

    Returns:
      `DatasetMeta`.

    Raises:
      ValueError: an unknown dataset or task, a task the dataset does not serve, or a non-positive
        ``image_size``.

    Examples:
      >>> meta = dataset_info("cluttered_digits/detection", task="segmentation")
      >>> meta.num_classes, meta.image_shape, meta.num_examples
      (11, (64, 64, 1), {'train': 50000, 'test': 10000})
    """
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
    """Each process's share of a global batch.

    Args:
      batch_size: the global batch size.
      shard_count: the number of processes.
      num_devices: the number of devices over all processes (None: ``jax.device_count()``).

    Returns:
      batch_size // shard_count.

    Raises:
      ValueError: ``batch_size`` is not positive or does not divide by ``shard_count`` and ``num_devices``.

    Examples:
      >>> per_process_batch(256, shard_count=2, num_devices=8)
      128
    """
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
    """A grain DataLoader over a dataset split whose iterator yields dict batches of NumPy arrays.

    Batch keys: ``image`` float32 (b, H, W, C), normalised; ``label`` int32 (b,). Detection adds ``boxes``
    float32 (b, max_boxes, 4) (ymin, xmin, ymax, xmax in [0, 1]), ``box_labels`` int32 (b, max_boxes) and
    ``box_valid`` bool (b, max_boxes); segmentation adds ``mask`` int32 (b, H, W) (0 = background,
    class + 1); reading (the reading configs of cluttered_digits) adds the detection keys, boxes in
    reading order, and ``sequence`` int32 (b, L + 1): digits 0-9, END = 10, then PAD = 11 (evaluation
    padding rows are all 0). Evaluation batches carry ``valid`` bool (b,).

    ``train=True``: shuffled with ``seed``, augmented, repeated ``num_epochs`` times (None: forever), the
    last partial batch dropped. ``train=False``: fixed order, one epoch by default, no augmentation, the
    last batch zero-padded (its padding rows have ``valid`` False). Shards are equal: with
    ``shard_count`` > 1 up to shard_count - 1 trailing records are left out so that all processes step
    together. cluttered_digits at its own image size is read as whole global batches from its
    memory-mapped columns (one gather per column instead of one record per example); each process takes
    its share of every global batch, so batches do not depend on the process count. Iterator state:
    ``it.get_state()`` / ``it.set_state(state)`` resume exactly (with the same ``worker_count``).
    Every record is checked as it is read: a label, box or mask value out of range raises ValueError
    naming the dataset, split, file and example.

    Args:
      dataset: a name of `ADAPTERS` or a `ClutteredDigitsConfig` (built into ``data_dir`` on first use;
        real datasets must be prepared, see `load_source`).
      split: the split to read (``"train"``, ``"test"``, a TFDS slice such as ``"train[:1000]"``).
      batch_size: the GLOBAL batch size; each process gets batch_size / shard_count examples per batch.
      task: one of `TASKS` that the dataset serves.
      train: training order and augmentation (True) or evaluation order (False).
      seed: seed of the shuffling and the augmentation.
      data_dir: the TFDS directory (None: `default_data_dir`).
      num_epochs: epochs to repeat (None: forever when training, one otherwise).
      image_size: resize to this size (an int for squares, or (H, W)); required when stored sizes vary.
      max_boxes: boxes per example after padding or truncation (detection).
      augment: training augmentations from ``"crop"``, ``"flip"`` and ``"affine"`` (None: the dataset's
        default; digits are never flipped).
      worker_count: grain worker processes running the transforms (0: in this process).
      read_threads: prefetch threads for file-backed sources.
      shard_index: this process's shard (None: ``jax.process_index()``); give both or neither.
      shard_count: the number of shards (None: ``jax.process_count()``).
      num_devices: the global device count ``batch_size`` must divide by (None: ``jax.device_count()``).

    Returns:
      A ``grain.DataLoader``; ``iter(loader)`` gives the batches.

    Raises:
      ValueError: an unknown dataset, task, split or augmentation, a dataset that does not serve ``task``,
        a ``batch_size`` that does not divide by the process and device counts, bad shards, ``max_boxes`` <
        1, ``worker_count`` < 0, ``read_threads`` < 1, or a dataset of varying image sizes without
        ``image_size``.
      FileNotFoundError: a real dataset not prepared in ``data_dir``; the message says how to prepare it.

    Examples:
      >>> import tempfile
      >>> from attn_jax.data import ClutteredDigitsConfig
      >>> tmp = tempfile.TemporaryDirectory()
      >>> small = ClutteredDigitsConfig(name="small", canvas_size=32, num_clutter=2, num_train=16, num_test=8)
      >>> loader = make_pipeline(small, "test", batch_size=4, task="detection", data_dir=tmp.name,
      ...                        num_devices=1)  # batch_size must divide by the device count
      Building cluttered_digits/small locally (no download): 24 examples into ...
      Built cluttered_digits/small in ...; later runs reuse it.
      >>> batch = next(iter(loader))
      >>> batch["image"].shape, batch["boxes"].shape, batch["box_valid"].shape, batch["valid"].tolist()
      ((4, 32, 32, 1), (4, 8, 4), (4, 8), [True, True, True, True])
      >>> tmp.cleanup()
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
