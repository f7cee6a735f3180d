"""Data validation at the boundary: every record is checked against the task's ranges as it is read.

A label, box or mask value out of range (a corrupt file, or data built for another number of classes) would
otherwise train silently (an out-of-range class index one-hot encodes to zeros). CheckedSource wraps a
random-access source, canonicalises each record with the dataset's adapter and raises ValueError naming
the dataset, split, file location and example index.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def example_problem(ex: dict, task: str, num_classes: int) -> str | None:
    """What is out of range in a canonical example for `task` (None when it is valid)."""
    if task == "classification" and "label" in ex:
        label = int(ex["label"])
        if not 0 <= label < num_classes:
            return f"label {label} outside [0, {num_classes})"
    if task == "detection":
        labels = np.asarray(ex.get("box_labels", ()))
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            return f"box_labels {bad.tolist()} outside [0, {num_classes})"
        boxes = np.asarray(ex.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
        if not np.all(np.isfinite(boxes)) or np.any((boxes < 0) | (boxes > 1)):
            return f"boxes {boxes.tolist()} not all within [0, 1] (normalised ymin, xmin, ymax, xmax)"
        if np.any(boxes[:, 2:] < boxes[:, :2]):
            return f"boxes {boxes.tolist()} have a max below its min (want ymin <= ymax, xmin <= xmax)"
    if task == "segmentation" and "mask" in ex:
        mask = np.asarray(ex["mask"])
        lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
        if lo < 0 or hi >= num_classes:
            return f"mask values in [{lo}, {hi}] outside [0, {num_classes}) (0 = background)"
    return None


def identity(record: dict) -> dict:
    """The canonicalisation after CheckedSource (which already canonicalised the record)."""
    return record


class CheckedSource:
    """Random-access source of canonical, range-checked examples over `source` (raw records)."""

    def __init__(self, source, canonicalize: Callable[[dict], dict], task: str, num_classes: int, where: str):
        self.source, self.canonicalize = source, canonicalize
        self.task, self.num_classes, self.where = task, num_classes, where

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        ex = self.canonicalize(self.source[index])
        problem = example_problem(ex, self.task, self.num_classes)
        if problem:
            raise ValueError(
                f"{self.where}, example {int(index)}: {problem} for task {self.task!r} with "
                f"{self.num_classes} classes; the data files are damaged or were built for other classes"
            )
        return ex

    def __repr__(self) -> str:
        return f"CheckedSource({self.source!r}, {self.task}, {self.num_classes} classes)"
