"""NumPy transforms as grain operations (randomness from grain: deterministic per record/batch and seed).

The canonical example dict that dataset adapters produce (sources.py):
    image       uint8 (H, W, C)
    label       int ()
    boxes       float32 (k, 4)             normalised (ymin, xmin, ymax, xmax)
    box_labels  int64 (k,)
    mask        uint8 (H, W)               0 = background, class + 1 on object pixels
    sequence    int64 (L + 1,)             reading: digits left to right, END, then PAD
Keys other than image are optional. `Prepare` works per example (canonicalise, resize, pad boxes);
augmentation and normalisation work on whole batches, vectorised. Boxes and masks move together with the
image: a tight box stays tight after a flip, and after a crop unless the crop clips it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import numpy as np

from attn_jax.data._synth import resize_bilinear


def _check_example(ex: dict) -> None:
    image = ex["image"]
    if image.ndim != 3:
        raise ValueError(f"example 'image' must be (H, W, C), got shape {image.shape}")
    if "mask" in ex and ex["mask"].shape != image.shape[:2]:
        raise ValueError(f"example 'mask' must be (H, W) = {image.shape[:2]}, got shape {ex['mask'].shape}")


def resize_example(ex: dict, height: int, width: int) -> dict:
    """Bilinear resize of the image, nearest-neighbour resize of the mask; normalised boxes unchanged."""
    _check_example(ex)
    out = dict(ex)
    h, w = ex["image"].shape[:2]
    if (h, w) == (height, width):
        return out
    chw = np.moveaxis(ex["image"], -1, 0)
    resized = np.moveaxis(resize_bilinear(chw, height, width), 0, -1)
    out["image"] = np.clip(np.round(resized), 0, 255).astype(ex["image"].dtype)
    if "mask" in ex:
        rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
        cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
        out["mask"] = ex["mask"][rows[:, None], cols[None, :]]
    return out


def pad_boxes(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> tuple[np.ndarray, ...]:
    """Pad (k, 4) boxes and (k,) labels to max_boxes (truncating extras); returns boxes, labels, valid."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[:max_boxes]
    labels = np.asarray(labels, np.int32).reshape(-1)[:max_boxes]
    k = len(boxes)
    valid = np.arange(max_boxes) < k
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    out_labels = np.zeros((max_boxes,), np.int32)
    out_boxes[:k], out_labels[:k] = boxes, labels
    return out_boxes, out_labels, valid


def _placed_boxes(batch: dict, pixel_boxes: np.ndarray, scale: np.ndarray) -> dict:
    """Boxes moved to `pixel_boxes` (b, K, 4) pixel (ymin, xmin, ymax, xmax), clipped to the image
    (scale = (h, w, h, w)); boxes with nothing left become invalid, zero, label 0. -> boxes, box_valid,
    box_labels."""
    px = np.clip(pixel_boxes, 0.0, scale)
    valid = batch["box_valid"] & (px[..., 2] > px[..., 0]) & (px[..., 3] > px[..., 1])
    return {
        "boxes": np.where(valid[..., None], px / scale, 0.0).astype(np.float32),
        "box_valid": valid,
        "box_labels": np.where(valid, batch["box_labels"], 0).astype(batch["box_labels"].dtype),
    }


def crop_batch(batch: dict, tops: np.ndarray, lefts: np.ndarray, pad: int) -> dict:
    """Zero-pad every example by `pad` pixels per side and cut its (H, W) window at (tops[i], lefts[i]).

    batch: image (b, H, W, C), optional mask (b, H, W), optional boxes (b, K, 4) normalised with
    box_valid (b, K). Boxes are shifted and clipped to the window; a box with nothing left is invalidated.
    """
    h, w = batch["image"].shape[1:3]
    out = dict(batch)
    out["image"] = _windows(batch["image"], tops, lefts, pad)
    if "mask" in batch:
        out["mask"] = _windows(batch["mask"], tops, lefts, pad)
    if "boxes" in batch:
        scale = np.array([h, w, h, w], np.float32)
        shift = (np.stack([tops, lefts, tops, lefts], axis=1) - pad).astype(np.float32)[:, None, :]
        out.update(_placed_boxes(batch, batch["boxes"] * scale - shift, scale))
    return out


def _windows(array: np.ndarray, tops: np.ndarray, lefts: np.ndarray, pad: int) -> np.ndarray:
    """(b, H, W, ...) zero-padded by `pad` per side -> the (H, W) window at (tops[i], lefts[i]) of each.
    One slice copy per example: on CPU faster than one fancy index over the whole batch."""
    h, w = array.shape[1:3]
    padded = np.pad(array, ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (array.ndim - 3))
    out = np.empty_like(array)
    for i, (top, left) in enumerate(zip(np.asarray(tops).tolist(), np.asarray(lefts).tolist())):
        out[i] = padded[i, top : top + h, left : left + w]
    return out


def flip_batch(batch: dict, flip: np.ndarray) -> dict:
    """Horizontally flip the examples where flip (b,) is True: image, mask and valid boxes together."""
    out = dict(batch)
    f = np.asarray(flip, bool)
    out["image"] = np.where(f[:, None, None, None], batch["image"][:, :, ::-1], batch["image"])
    if "mask" in batch:
        out["mask"] = np.where(f[:, None, None], batch["mask"][:, :, ::-1], batch["mask"])
    if "boxes" in batch:
        bx = batch["boxes"]
        flipped = np.stack([bx[..., 0], 1.0 - bx[..., 3], bx[..., 2], 1.0 - bx[..., 1]], axis=-1)
        keep = f[:, None, None] & batch["box_valid"][..., None]
        out["boxes"] = np.where(keep, flipped, bx).astype(np.float32)
    return out


def random_affine_maps(
    rng: np.random.Generator, b: int, max_scale_change: float, max_rotation_degrees: float
):
    """(b, 2, 2) random zoom-and-rotate matrices: scale uniform in 1 +- max_scale_change, angle in
    +- max_rotation_degrees, mapping (row, col) offsets from the image centre in the input to the output."""
    scale = rng.uniform(1.0 - max_scale_change, 1.0 + max_scale_change, b)
    angle = np.deg2rad(rng.uniform(-max_rotation_degrees, max_rotation_degrees, b))
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def affine_batch(batch: dict, maps: np.ndarray) -> dict:
    """Warp every example by its (2, 2) linear map `maps[i]` about the image centre (input -> output).

    Image: bilinear, zeros outside; mask: nearest, background (0) outside; boxes: the box around the
    four mapped corners, clipped to the image, invalidated when nothing is left. Shapes are unchanged.
    """
    image = batch["image"]
    b, h, w = image.shape[:3]
    maps = np.asarray(maps, np.float64).reshape(b, 2, 2)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    inv = np.linalg.inv(maps).astype(np.float32)[:, :, :, None, None]  # output -> input, (b, 2, 2, 1, 1)
    dy = (np.arange(h, dtype=np.float32) - centre[0].astype(np.float32))[:, None]
    dx = (np.arange(w, dtype=np.float32) - centre[1].astype(np.float32))[None, :]
    src_rows = inv[:, 0, 0] * dy + inv[:, 0, 1] * dx + np.float32(centre[0])  # (b, H, W)
    src_cols = inv[:, 1, 0] * dy + inv[:, 1, 1] * dx + np.float32(centre[1])
    # Pad by 2 zero pixels per side and clip the top-left tap to [-2, h] x [-2, w]: taps off the image
    # then read zeros, and no bounds test is needed per tap.
    hp, wp = h + 4, w + 4
    base = (np.arange(b, dtype=np.int64) * (hp * wp))[:, None, None]
    r0, c0 = np.floor(src_rows), np.floor(src_cols)
    fr, fc = (src_rows - r0)[..., None], (src_cols - c0)[..., None]
    top_left = base + (np.clip(r0, -2, h).astype(np.int64) + 2) * wp + np.clip(c0, -2, w).astype(np.int64) + 2
    channels = image.shape[3:]
    padded = np.pad(image.astype(np.float32), ((0, 0), (2, 2), (2, 2)) + ((0, 0),) * len(channels))
    flat = padded.reshape(b * hp * wp, *channels)
    top = np.take(flat, top_left, 0) * (1 - fc) + np.take(flat, top_left + 1, 0) * fc
    bottom = np.take(flat, top_left + wp, 0) * (1 - fc) + np.take(flat, top_left + wp + 1, 0) * fc
    warped = top * (1 - fr) + bottom * fr
    out = dict(batch)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        warped = np.clip(np.round(warped), info.min, info.max)
    out["image"] = warped.astype(image.dtype)
    if "mask" in batch:
        nearest = base + (np.clip(np.round(src_rows), -2, h).astype(np.int64) + 2) * wp
        nearest += np.clip(np.round(src_cols), -2, w).astype(np.int64) + 2
        out["mask"] = np.take(np.pad(batch["mask"], ((0, 0), (2, 2), (2, 2))).reshape(-1), nearest)
    if "boxes" in batch:
        scale = np.array([h, w], np.float64)
        bx = batch["boxes"].astype(np.float64)  # (b, K, 4) normalised (ymin, xmin, ymax, xmax)
        corners = np.stack(
            [bx[..., [0, 1]], bx[..., [0, 3]], bx[..., [2, 1]], bx[..., [2, 3]]], axis=-2
        ) * scale - (centre + 0.5)  # (b, K, 4, 2) pixel-edge coordinates about the centre
        moved = np.einsum("bij,bkcj->bkci", maps, corners) + centre + 0.5
        pixel_boxes = np.concatenate([moved.min(-2), moved.max(-2)], -1)
        out.update(_placed_boxes(batch, pixel_boxes, np.concatenate([scale, scale])))
    return out


@dataclasses.dataclass(frozen=True)
class Prepare(grain.transforms.Map):
    """Per example: raw record -> canonical dict (`canonicalize`), resized, boxes padded, task keys kept.

    Output: image uint8 (H, W, C); label int32 (); detection: boxes float32 (max_boxes, 4), box_labels
    int32 (max_boxes,), box_valid bool (max_boxes,); segmentation: mask int32 (H, W); reading: the
    detection keys and sequence int32 (L + 1,).
    """

    canonicalize: Callable[[dict], dict]
    task: str
    size: tuple[int, int] | None = None
    max_boxes: int = 8

    def map(self, element: dict) -> dict:
        ex = self.canonicalize(element)
        if self.size is not None:
            ex = resize_example(ex, *self.size)
        _check_example(ex)
        out = {"image": ex["image"], "label": np.int32(ex.get("label", 0))}
        if self.task in ("detection", "reading"):
            out["boxes"], out["box_labels"], out["box_valid"] = pad_boxes(
                ex["boxes"], ex["box_labels"], self.max_boxes
            )
        if self.task == "reading":
            out["sequence"] = np.asarray(ex["sequence"], np.int32)
        elif self.task == "segmentation":
            out["mask"] = np.asarray(ex["mask"], np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class AugmentBatch(grain.transforms.RandomMap):
    """Per batch (vectorised), in this order: random zoom and rotation about the centre (`affine`),
    random pad-and-crop (pad = pad_fraction of the side) and horizontal flip."""

    crop: bool = True
    flip: bool = False
    pad_fraction: float = 0.125
    affine: bool = False
    max_scale_change: float = 0.1
    max_rotation_degrees: float = 10.0

    def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
        b, h, w = batch["image"].shape[:3]
        if self.affine:
            maps = random_affine_maps(rng, b, self.max_scale_change, self.max_rotation_degrees)
            batch = affine_batch(batch, maps)
        if self.crop:
            pad = max(1, round(self.pad_fraction * max(h, w)))
            tops, lefts = rng.integers(0, 2 * pad + 1, (2, b))
            batch = crop_batch(batch, tops, lefts, pad)
        if self.flip:
            batch = flip_batch(batch, rng.random(b) < 0.5)
        return batch


@dataclasses.dataclass(frozen=True)
class NormalizeBatch(grain.transforms.Map):
    """image uint8 -> float32 (x / 255 - mean) / std, per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def map(self, batch: dict) -> dict:
        scale = 1.0 / (255.0 * np.asarray(self.std, np.float32))
        shift = np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        return {**batch, "image": batch["image"].astype(np.float32) * scale - shift}


@dataclasses.dataclass(frozen=True)
class PadBatch(grain.transforms.Map):
    """Pad a possibly short final batch to `batch_size` with zeros; adds "valid" bool (b,)."""

    batch_size: int

    def map(self, batch: dict) -> dict:
        n = len(batch["image"])
        out = {}
        for key, value in batch.items():
            pad = np.zeros((self.batch_size - n, *value.shape[1:]), value.dtype)
            out[key] = np.concatenate([value, pad]) if n < self.batch_size else value
        out["valid"] = np.arange(self.batch_size) < n
        return out
