"""Tasks of the training loop by name: classification, detection, segmentation, reading.

task = make_task(config, meta)          # config.task
model = task.build_model()              # BatchNorm over the axis "data"
"""

from __future__ import annotations

from attn_jax.data import dataset_info
from attn_jax.train.tasks.base import Task
from attn_jax.train.tasks.classification import Classification
from attn_jax.train.tasks.detection import Detection
from attn_jax.train.tasks.reading import Reading
from attn_jax.train.tasks.segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Detection, Segmentation, Reading)}


def task_name(config) -> str:
    """The task an experiment config names.

    Args:
      config: an experiment config.

    Returns:
      ``config.task``.
    """
    return config.task


def get_task(name: str) -> type[Task]:
    """The task class registered under a name in :data:`attn_jax.train.tasks.TASKS`.

    Args:
      name: ``"classification"``, ``"detection"`` or ``"segmentation"``.

    Returns:
      The :class:`attn_jax.train.tasks.Task` subclass (not an instance).

    Raises:
      ValueError: ``name`` is not registered; the message lists the known tasks.

    Examples:
      >>> get_task("detection").best_metric
      'AP50_voc'
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def make_task(config, meta=None) -> Task:
    """The task of an experiment config, for a dataset.

    Args:
      config: an experiment config; ``config.task`` picks the task.
      meta: the dataset's facts (image shape, number of classes); None for
        :func:`attn_jax.data.dataset_info` of ``config.data.dataset`` (and ``config.data.dir``).

    Returns:
      An instance of the task's :class:`attn_jax.train.tasks.Task` subclass.

    Raises:
      ValueError: an unknown task or dataset.
    """
    cls = get_task(task_name(config))
    if meta is None:
        meta = dataset_info(config.data.dataset, task=cls.name, data_dir=config.data.dir)
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
