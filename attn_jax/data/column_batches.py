"""Whole batches gathered from memory-mapped columns: one indexed read per column instead of one grain
record per example.

Reading a batch of cluttered_digits examples record by record through grain spends its time in Python
(sampler, per-record transforms, stacking) that a training step on a small CPU would otherwise have to
itself; the same batch as one fancy index per column costs a small fraction of that (measured in
docs/cpu.md, "Whole-batch reads of the embedded dataset", and benchmarks/results/input_pipeline.json).
`ColumnBatches` is a random-access source whose record j is GLOBAL batch j:

    train: epoch e = j // batches_per_epoch is a permutation of the split drawn from (seed, e); the last
           partial batch of an epoch is dropped.
    eval:  one epoch in the split's order; the last batch is short (PadBatch pads it and marks "valid").

Every process reads the same global batch and the ops end with `TakeShard`, so a batch's examples and
their random augmentation do not depend on the process count (2 processes x 2 devices see exactly what
1 process x 4 devices sees).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from attn_jax.data.memory_source import MemorySource

_FOREVER_EPOCHS = 1_000_000  # train with num_epochs=None: the source is long enough never to run out


class ColumnBatches:
    """Random-access source of global batches (dicts of NumPy arrays) from a MemorySource of canonical
    columns (image uint8 (n, H, W, C), label, boxes / box_labels (ragged or (n, k, ...)), mask,
    sequence (n, L + 1))."""

    def __init__(
        self,
        source: MemorySource,
        task: str,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        num_epochs: int | None = None,
        max_boxes: int = 8,
    ):
        """batch_size: the GLOBAL batch; num_epochs: train epochs (None = forever; eval is one epoch)."""
        self.source, self.task, self.batch_size = source, task, batch_size
        self.train, self.seed, self.max_boxes = train, seed, max_boxes
        n = len(source)
        self.per_epoch = n // batch_size if train else -(-n // batch_size)
        if train and self.per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples of {source!r}")
        self.epochs = (num_epochs or _FOREVER_EPOCHS) if train else (num_epochs or 1)
        self._order = (-1, None)  # (epoch, permutation): the epoch being read

    def __len__(self) -> int:
        return self.per_epoch * self.epochs

    def rows(self, index: int) -> np.ndarray:
        """Record indices of global batch `index` (int64, at most batch_size of them)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        epoch, k = divmod(int(index), self.per_epoch)
        n, start = len(self.source), k * self.batch_size
        if not self.train:
            return np.arange(start, min(start + self.batch_size, n))
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return self._order[1][start : start + self.batch_size]

    def __getitem__(self, index: int) -> dict:
        rows = self.rows(index)
        image, _ = self.source.column("image")
        label = self.source.column("label")
        batch = {
            "image": np.asarray(image[rows]),
            "label": np.zeros(len(rows), np.int32) if label is None else np.asarray(label[0][rows], np.int32),
        }
        if self.task in ("detection", "reading"):
            batch["boxes"], batch["box_labels"], batch["box_valid"] = self._padded_boxes(rows)
        if self.task == "reading":
            batch["sequence"] = np.asarray(self.source.column("sequence")[0][rows], np.int32)
        elif self.task == "segmentation":
            batch["mask"] = np.asarray(self.source.column("mask")[0][rows], np.int32)
        return batch

    def _padded_boxes(self, rows: np.ndarray):
        """(b, max_boxes, 4) float32 boxes, (b, max_boxes) int32 labels and bool valid of `rows`."""
        (boxes, offsets), (labels, _) = self.source.column("boxes"), self.source.column("box_labels")
        b, k = len(rows), self.max_boxes
        if offsets is None:  # equal box counts: (n, K, 4)
            take = min(k, boxes.shape[1])
            out_boxes = np.zeros((b, k, 4), np.float32)
            out_labels = np.zeros((b, k), np.int32)
            out_boxes[:, :take] = boxes[rows, :take]
            out_labels[:, :take] = labels[rows, :take]
            return out_boxes, out_labels, np.broadcast_to(np.arange(k) < take, (b, k)).copy()
        lo, hi = offsets[rows], offsets[rows + 1]
        count = np.minimum(hi - lo, k)
        valid = np.arange(k)[None, :] < count[:, None]
        flat = (lo[:, None] + np.arange(k)[None, :])[valid]  # row-major: record by record, box by box
        out_boxes = np.zeros((b, k, 4), np.float32)
        out_labels = np.zeros((b, k), np.int32)
        out_boxes[valid], out_labels[valid] = boxes[flat], labels[flat]
        return out_boxes, out_labels, valid

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return f"ColumnBatches({self.source!r}, {self.task}, global batch {self.batch_size}, {kind})"


@dataclasses.dataclass(frozen=True)
class TakeShard(grain.transforms.Map):
    """This process's share of a global batch: rows [index * b, (index + 1) * b) with b = batch / count."""

    index: int
    count: int

    def map(self, batch: dict) -> dict:
        if self.count == 1:
            return batch
        b = len(batch["image"]) // self.count
        return {key: value[self.index * b : (self.index + 1) * b] for key, value in batch.items()}
