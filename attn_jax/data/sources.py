"""Dataset adapters: which TFDS dataset a name means, which tasks it serves, and how its records map to
the canonical example dict (see transforms.py). Read with `tfds.data_source` (array_record files).

Known names: "cluttered_digits" (= "cluttered_digits/default"), "cluttered_digits/detection",
"cluttered_digits/tiny", "cluttered_digits/tiny_detection", "cluttered_digits/reading",
"cluttered_digits/tiny_reading" (built on first use), and the real datasets
"mnist", "cifar10", "oxford_iiit_pet", "voc/2007" (prepared by the user, see `prepare_instructions`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from attn_jax.data import cluttered_digits as cd
from attn_jax.data._paths import default_data_dir
from attn_jax.data.memory_source import DamagedCacheError, MemorySource
from attn_jax.data.transforms import resize_example

TASKS = ("classification", "detection", "segmentation", "reading")
#: Classes a reading model predicts: the digits 0-9 and END (`cluttered_digits.END_TOKEN` = 10); PAD =
#: `cluttered_digits.PAD_TOKEN` = 11 = this number, outside the predicted range.
READING_CLASSES = cd.END_TOKEN + 1
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How one dataset enters the pipeline.

    tasks: task -> number of classes the model predicts (segmentation counts background as class 0;
      reading counts the digits and END).
    image_shape: (H, W, C) of stored images, H = W = None when sizes vary (then image_size is required).
    augment: default training augmentations ("crop", "flip"); digits are never flipped, and the reading
      configs are not augmented (a crop could cut off a digit that the sequence still names).
    canonicalize: raw TFDS record -> canonical example dict.
    """

    name: str
    tfds_name: str
    tasks: dict[str, int]
    image_shape: tuple[int | None, int | None, int]
    splits: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    canonicalize: Callable[[dict], dict]
    config: cd.ClutteredDigitsConfig | None = None


def _image_label(record: dict) -> dict:
    return {"image": np.asarray(record["image"], np.uint8), "label": int(record["label"])}


def _digits_record(record: dict) -> dict:
    out = _image_label(record)
    out["boxes"] = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    out["box_labels"] = np.asarray(record["box_labels"], np.int64).reshape(-1)
    out["mask"] = np.asarray(record["mask"], np.uint8)
    if "sequence" in record:
        out["sequence"] = np.asarray(record["sequence"], np.int64).reshape(-1)
    return out


def _ordered_boxes(boxes: np.ndarray) -> np.ndarray:
    """(k, 4) boxes with each min <= max and all in [0, 1]."""
    b = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0.0, 1.0)
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                     np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)  # fmt: skip


def _voc_record(record: dict) -> dict:
    """VOC: objects/bbox (k, 4) + objects/label (k,); label = class of the first object (0 if none)."""
    boxes = _ordered_boxes(record["objects"]["bbox"])
    labels = np.asarray(record["objects"]["label"], np.int64).reshape(-1)
    k = min(len(boxes), len(labels))
    image = np.asarray(record["image"], np.uint8)
    return {"image": image, "label": int(labels[0]) if k else 0, "boxes": boxes[:k], "box_labels": labels[:k]}


# Oxford-IIIT Pet trimap: 1 = pet, 2 = background, 3 = border  ->  0 = background, 1 = pet, 2 = border.
_PET_TRIMAP = np.array([0, 1, 0, 2], np.uint8)


def _pet_record(record: dict) -> dict:
    out = _image_label(record)
    trimap = np.asarray(record["segmentation_mask"]).reshape(np.shape(record["segmentation_mask"])[:2])
    mask = _PET_TRIMAP[np.clip(trimap, 0, 3)]
    if mask.shape != out["image"].shape[:2]:  # never in the real data; mock data draws sizes independently
        h, w = out["image"].shape[:2]
        mask = resize_example({"image": mask[..., None], "mask": mask}, h, w)["mask"]
    out["mask"] = mask
    return out


def _digits_adapter(cfg: cd.ClutteredDigitsConfig) -> Adapter:
    name = "cluttered_digits" if cfg.name == "default" else f"cluttered_digits/{cfg.name}"
    tasks = {"classification": 10, "detection": 10, "segmentation": 11}
    if cfg.reading:
        tasks["reading"] = READING_CLASSES
    return Adapter(
        name=name,
        tfds_name=f"cluttered_digits/{cfg.name}",
        tasks=tasks,
        image_shape=(*cfg.image_hw, cfg.channels),
        splits=("train", "test"),
        mean=(0.06,) * cfg.channels,  # measured: 0.051 / 0.149 (default), 0.068 / 0.173 (detection)
        std=(0.16,) * cfg.channels,
        augment=() if cfg.reading else ("crop",),
        canonicalize=_digits_record,
        config=cfg,
    )


ADAPTERS: dict[str, Adapter] = {a.name: a for a in map(_digits_adapter, cd.BUILDER_CONFIGS)}
ADAPTERS["mnist"] = Adapter(
    "mnist", "mnist", {"classification": 10}, (28, 28, 1), ("train", "test"), (0.1307,), (0.3081,),
    ("crop",), _image_label,
)  # fmt: skip
ADAPTERS["cifar10"] = Adapter(
    "cifar10", "cifar10", {"classification": 10}, (32, 32, 3), ("train", "test"),
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), ("crop", "flip"), _image_label,
)  # fmt: skip
ADAPTERS["oxford_iiit_pet"] = Adapter(
    "oxford_iiit_pet", "oxford_iiit_pet", {"classification": 37, "segmentation": 3}, (None, None, 3),
    ("train", "test"), _IMAGENET_MEAN, _IMAGENET_STD, ("crop", "flip"), _pet_record,
)  # fmt: skip
ADAPTERS["voc/2007"] = Adapter(
    "voc/2007", "voc/2007", {"detection": 20}, (None, None, 3), ("train", "validation", "test"),
    _IMAGENET_MEAN, _IMAGENET_STD, ("flip",), _voc_record,
)  # fmt: skip


def get_adapter(dataset: str | cd.ClutteredDigitsConfig, task: str | None = None) -> Adapter:
    """The adapter of a dataset: how its TFDS records enter the pipeline, and which tasks it serves.

    Args:
      dataset: a name of `ADAPTERS` (``"cluttered_digits"``, ``"mnist"``, ``"voc/2007"``, ...) or a
        `ClutteredDigitsConfig` of your own.
      task: None, or a task of `TASKS` that the dataset must serve.

    Returns:
      The dataset's adapter: its TFDS name, ``tasks`` (task -> number of classes the model predicts),
      stored ``image_shape``, splits, normalisation mean and std, default augmentations and record
      canonicalisation.

    Raises:
      ValueError: an unknown dataset or task, or a dataset that does not serve ``task``.

    Examples:
      >>> adapter = get_adapter("oxford_iiit_pet", task="segmentation")
      >>> adapter.tasks, adapter.splits
      ({'classification': 37, 'segmentation': 3}, ('train', 'test'))
    """
    if isinstance(dataset, cd.ClutteredDigitsConfig):
        adapter = _digits_adapter(dataset)
    elif dataset in ADAPTERS:
        adapter = ADAPTERS[dataset]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    if task is not None and task not in adapter.tasks:
        served = list(adapter.tasks)
        raise ValueError(f"dataset {adapter.name!r} does not serve task {task!r}; it serves {served}")
    return adapter


def prepare_instructions(adapter: Adapter, data_dir: str) -> str:
    return (
        f"dataset {adapter.tfds_name!r} is not prepared as array_record in data_dir={data_dir!r}. "
        f"Prepare it once (needs TensorFlow, only for this step):\n"
        f"    pip install 'attn_jax[tf]'\n"
        f"    tfds build {adapter.tfds_name} --data_dir={data_dir} --file_format=array_record\n"
        f"(voc and oxford_iiit_pet download several hundred MB.)"
    )


# Errors of the machine, not of the files: reported as they are, never as a damaged dataset.
_RESOURCE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOMEM)


def _digits_source(adapter: Adapter, split: str, data_dir: str) -> MemorySource:
    """cluttered_digits `split`, built on first use and held as memory-mapped columns. Files of an earlier
    build that fail to read (a truncated array_record, a garbage dataset_info.json, a damaged column cache)
    raise DamagedCacheError naming the directory and saying to delete it."""
    where = os.path.join(data_dir, *adapter.tfds_name.split("/"), str(cd.ClutteredDigits.VERSION))
    built = os.path.exists(os.path.join(where, "dataset_info.json"))
    try:
        builder = cd.prepare(adapter.config, data_dir)
        if adapter.config in cd.BUILDER_CONFIGS:
            source = tfds.data_source(adapter.tfds_name, split=split, data_dir=data_dir, download=False)
        else:
            source = builder.as_data_source(split=split)
        # small enough to hold in memory: decoded once into .npy columns beside the dataset files
        safe_split = "".join(c if c.isalnum() else "_" for c in split)
        return MemorySource(source, os.path.join(builder.data_dir, f"memory-{safe_split}"))
    except DamagedCacheError:
        raise
    except Exception as err:
        resource = isinstance(err, MemoryError) or getattr(err, "errno", None) in _RESOURCE_ERRNOS
        if not built or resource:
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        problem = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise DamagedCacheError(
            f"dataset files in {where} are damaged or incomplete ({problem}). Delete the directory "
            f"(rm -r {where}); it is rebuilt on next use"
        ) from err


def load_source(adapter: Adapter, split: str, data_dir: str | None = None):
    """A random-access source (``len``, ``__getitem__``) of a split's raw records.

    cluttered_digits configs are built on first use and held as memory-mapped columns; real datasets are
    read through `tfds.data_source` and must have been prepared as array_record in ``data_dir``.

    Args:
      adapter: the dataset's adapter (`get_adapter`).
      split: a split of the adapter (``"train"``, ``"test"``, ...), optionally sliced as TFDS allows
        (``"train[:1000]"``).
      data_dir: the TFDS directory (None: `default_data_dir`).

    Returns:
      The source; record i is a dict of NumPy arrays in the dataset's TFDS format.

    Raises:
      ValueError: an unknown split; for cluttered_digits, files of an earlier build that fail to read
        (``DamagedCacheError``, a ValueError naming the directory to delete).
      FileNotFoundError: a real dataset not prepared in ``data_dir``; the message gives the ``tfds build``
        command.

    Examples:
      >>> import tempfile
      >>> tmp = tempfile.TemporaryDirectory()
      >>> load_source(get_adapter("mnist"), "train", data_dir=tmp.name)
      Traceback (most recent call last):
      FileNotFoundError: dataset 'mnist' is not prepared as array_record in data_dir=...
      >>> tmp.cleanup()
    """
    data_dir = data_dir or default_data_dir()
    if split.split("[")[0] not in adapter.splits:
        raise ValueError(f"unknown split {split!r} for {adapter.name!r}; known: {list(adapter.splits)}")
    if adapter.config is not None:
        return _digits_source(adapter, split, data_dir)
    try:
        return tfds.data_source(adapter.tfds_name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError) as err:
        raise FileNotFoundError(prepare_instructions(adapter, data_dir)) from err
