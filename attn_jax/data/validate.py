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
    """What is out of range in a canonical example for `task` (None when it is valid).

    Few whole-array reductions per record (it runs on every read): min / max, NaN failing every comparison.
    """
    if task == "classification" and "label" in ex:
        label = int(ex["label"])
        if not 0 <= label < num_classes:
            return f"label {label} outside [0, {num_classes})"
    if task in ("detection", "reading"):
        box_classes = num_classes - 1 if task == "reading" else num_classes  # reading: END is no box class
        labels = np.asarray(ex.get("box_labels", ()))
        if labels.size and not (labels.min() >= 0 and labels.max() < box_classes):
            return f"box_labels {labels.tolist()} outside [0, {box_classes})"
        boxes = np.asarray(ex.get("boxes", ()), np.float64).reshape(-1, 4)
        if boxes.size and not (boxes.min() >= 0.0 and boxes.max() <= 1.0):
            return f"boxes {boxes.tolist()} not all within [0, 1] (normalised ymin, xmin, ymax, xmax)"
        if boxes.size and not (boxes[:, 2:] >= boxes[:, :2]).all():
            return f"boxes {boxes.tolist()} have a max below its min (want ymin <= ymax, xmin <= xmax)"
    if task == "reading":
        return _sequence_problem(ex, num_classes)
    if task == "segmentation" and "mask" in ex:
        mask = np.asarray(ex["mask"])
        lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
        if lo < 0 or hi >= num_classes:
            return f"mask values in [{lo}, {hi}] outside [0, {num_classes}) (0 = background)"
    return None


def _sequence_problem(ex: dict, num_classes: int) -> str | None:
    """What is wrong with a reading example's ``sequence``: want digits in [0, END), one END = num_classes
    - 1, then PAD = num_classes to the end, as many digits as boxes, and the boxes' labels."""
    if "sequence" not in ex:
        return "no 'sequence' (a reading config's feature)"
    sequence = np.asarray(ex["sequence"]).reshape(1, -1)
    labels = np.asarray(ex.get("box_labels", ()), np.int64).reshape(-1)
    if _bad_sequences(sequence, labels, np.array([0, len(labels)]), num_classes)[0]:
        return (
            f"sequence {sequence[0].tolist()} is not digits in [0, {num_classes - 1}), "
            f"END = {num_classes - 1}, then PAD = {num_classes}, spelling box_labels {labels.tolist()}"
        )
    return None


def _bad_sequences(sequences, labels, offsets, num_classes: int) -> np.ndarray:
    """Per-record flags (n,) of sequences (n, T) that are not box_labels (ragged by offsets (n + 1,) or
    (n, k)) followed by END = num_classes - 1 and PAD = num_classes."""
    end, pad = num_classes - 1, num_classes
    sequences = np.asarray(sequences)
    n, length = sequences.shape
    is_end = sequences == end
    first_end = is_end.argmax(axis=1)
    position = np.arange(length)[None, :]
    before, after = position < first_end[:, None], position > first_end[:, None]
    bad = is_end.sum(axis=1) != 1
    bad |= (before & ((sequences < 0) | (sequences >= end))).any(axis=1)
    bad |= (after & (sequences != pad)).any(axis=1)
    if offsets is None:  # equal box counts: (n, k)
        offsets = np.arange(n + 1, dtype=np.int64) * (labels.shape[1] if labels.ndim == 2 else 0)
        labels = labels.reshape(-1)
    counts = np.diff(offsets)
    bad |= counts != first_end
    rows = np.flatnonzero(~bad)
    lengths = counts[rows]
    take = np.repeat(rows, lengths)  # the digits spell the box labels, in order
    within = np.arange(take.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    mismatch = sequences[take, within] != labels[np.repeat(offsets[rows], lengths) + within]
    bad[take[mismatch]] = True
    return bad


def identity(record: dict) -> dict:
    """The canonicalisation after CheckedSource (which already canonicalised the record)."""
    return record


def _record_of(bad_rows: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Per-record flags from per-row flags of a column (ragged: rows lo..hi of record i = offsets[i:i+2])."""
    if offsets is None:
        return bad_rows.reshape(len(bad_rows), -1).any(axis=1)
    rows = np.flatnonzero(bad_rows.reshape(len(bad_rows), -1).any(axis=1))
    flags = np.zeros(len(offsets) - 1, bool)
    flags[np.searchsorted(offsets, rows, side="right") - 1] = True
    return flags


def first_bad_record(source, task: str, num_classes: int) -> int | None:
    """Index of the first out-of-range record of a column source (MemorySource), vectorised; None if valid."""
    bad = np.zeros(len(source), bool)
    if task == "classification" and source.column("label") is not None:
        labels, _ = source.column("label")
        bad |= (labels < 0) | (labels >= num_classes)
    if task in ("detection", "reading"):
        box_classes = num_classes - 1 if task == "reading" else num_classes  # reading: END is no box class
        if source.column("box_labels") is not None:
            labels, offsets = source.column("box_labels")
            bad |= _record_of((labels < 0) | (labels >= box_classes), offsets)
        if source.column("boxes") is not None:
            boxes, offsets = source.column("boxes")
            boxes = np.asarray(boxes, np.float64).reshape(len(boxes), -1, 4) if offsets is None else boxes
            ok = (boxes >= 0) & (boxes <= 1)  # NaN fails both
            ok[..., 2:] &= boxes[..., 2:] >= boxes[..., :2]
            bad |= _record_of(~ok, offsets)
    if task == "reading":
        if source.column("sequence") is None or source.column("box_labels") is None:
            bad[:] = True  # example_problem names what is missing
        else:
            labels, offsets = source.column("box_labels")
            bad |= _bad_sequences(source.column("sequence")[0], labels, offsets, num_classes)
    if task == "segmentation" and source.column("mask") is not None:
        masks, _ = source.column("mask")
        flat = masks.reshape(len(masks), -1)
        bad |= (flat.min(axis=1) < 0) | (flat.max(axis=1) >= num_classes)
    found = np.flatnonzero(bad)
    return int(found[0]) if found.size else None


class CheckedSource:
    """Random-access source of canonical, range-checked examples over `source` (raw records)."""

    def __init__(
        self,
        source,
        canonicalize: Callable[[dict], dict],
        task: str,
        num_classes: int,
        where: str,
        columns=False,
    ):
        """columns=True: `source` is a MemorySource whose columns are the canonical fields (cluttered_digits):
        they are checked once here, vectorised, instead of record by record."""
        self.source, self.canonicalize = source, canonicalize
        self.task, self.num_classes, self.where = task, num_classes, where
        self.prechecked = False
        if columns:
            bad = first_bad_record(source, task, num_classes)
            if bad is not None:
                self[bad]  # raises with the record's message
            self.prechecked = True

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        ex = self.canonicalize(self.source[index])
        if self.prechecked:
            return ex
        problem = example_problem(ex, self.task, self.num_classes)
        if problem:
            raise ValueError(
                f"{self.where}, example {int(index)}: {problem} for task {self.task!r} with "
                f"{self.num_classes} classes; the data files are damaged or were built for other classes"
            )
        return ex

    def __repr__(self) -> str:
        return f"CheckedSource({self.source!r}, {self.task}, {self.num_classes} classes)"
