"""Tasks of the training loop by name: classification, detection, segmentation.

task = make_task(config, meta)          # config.task, default "classification"
model = task.build_model()              # BatchNorm over the axis "data"
"""

from __future__ import annotations

from attn_jax.data import dataset_info
from attn_jax.train.tasks.base import Task
from attn_jax.train.tasks.classification import Classification
from attn_jax.train.tasks.detection import Detection
from attn_jax.train.tasks.segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Detection, Segmentation)}


def task_name(config) -> str:
    """config.task, "classification" when absent."""
    return config.get("task", "classification")


def get_task(name: str) -> type[Task]:
    """The Task class registered as `name`; ValueError listing the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def make_task(config, meta=None) -> Task:
    """The task of `config` for the dataset facts `meta` (default: dataset_info of config.dataset)."""
    cls = get_task(task_name(config))
    if meta is None:
        meta = dataset_info(config.dataset, task=cls.name, data_dir=config.get("data_dir"))
    return cls(config, meta)


__all__ = [
    "TASKS",
    "Classification",
    "Detection",
    "Segmentation",
    "Task",
    "get_task",
    "make_task",
    "task_name",
]
