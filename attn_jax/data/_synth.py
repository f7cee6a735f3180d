"""Pure-NumPy synthesis of cluttered-digit canvases from scikit-learn's bundled 8x8 handwritten digits.

Everything is vectorised over a chunk of examples; randomness comes only from the generator passed in,
so a chunk is a deterministic function of (seed, split, chunk index). No TFDS, no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

#: Fraction of the 1,797 source digits (by identity) that goes to the test split.
TEST_FRACTION = 0.2
#: A pixel of an upscaled digit (intensity in [0, 1]) counts as "digit" in the mask at or above this.
MASK_THRESHOLD = 0.3
#: Digit side lengths, as fractions of the canvas side.
SIZE_FRACTIONS = (0.25, 0.3125, 0.375, 0.4375)
#: Candidate positions tried per digit when placing several digits without overlap.
PLACEMENT_TRIES = 64
#: Token ids of a reading example's `sequence`: the digits 0-9 are their own ids, then END, then PAD.
END_TOKEN = 10
PAD_TOKEN = 11


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """What to draw: canvas height (and width), channels (1 or 3), digits per image, clutter fragments.

    ``reading``: the digits stand left to right in a row, apart along x, and each example carries its
    digit string as ``sequence``; the row must fit: max_digits * the largest digit side <= the width.
    Digit and fragment sizes follow the height (``canvas_size``).
    """

    canvas_size: int = 64
    channels: int = 1
    min_digits: int = 1
    max_digits: int = 1
    num_clutter: int = 6
    canvas_width: int | None = None
    reading: bool = False

    def __post_init__(self):
        if self.canvas_size < 16:
            raise ValueError(f"canvas_size must be >= 16, got {self.canvas_size}")
        if self.canvas_width is not None and self.canvas_width < 16:
            raise ValueError(f"canvas_width must be >= 16 (or None: square), got {self.canvas_width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"need 1 <= min_digits <= max_digits, got min_digits={self.min_digits}, "
                f"max_digits={self.max_digits}"
            )
        if not self.reading and self.max_digits > 4:
            raise ValueError(f"max_digits must be <= 4 (or reading=True), got {self.max_digits}")
        row = self.max_digits * self.digit_sizes[-1]
        if self.reading and row > self.width:
            raise ValueError(
                f"max_digits={self.max_digits} digits of up to {self.digit_sizes[-1]} px need a canvas_width "
                f">= {row} for reading, got {self.width}"
            )
        if self.num_clutter < 0:
            raise ValueError(f"num_clutter must be >= 0, got {self.num_clutter}")

    @property
    def width(self) -> int:
        """Canvas width in pixels (``canvas_width``, else ``canvas_size``: square)."""
        return self.canvas_size if self.canvas_width is None else self.canvas_width

    @property
    def digit_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({max(8, round(self.canvas_size * f)) for f in SIZE_FRACTIONS}))

    @property
    def fragment_size(self) -> int:
        return max(4, self.canvas_size // 6)


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digits: images float32 (1797, 8, 8) in [0, 1] and labels int64 (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_identities(seed: int) -> dict[str, np.ndarray]:
    """Disjoint source-digit indices per split ("train", "test"), a fixed permutation of 0..1796."""
    n = len(source_digits()[1])
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return {"train": np.sort(perm[n_test:]), "test": np.sort(perm[:n_test])}


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix (align-corners=False, edge-clamped)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    w_hi = np.clip(pos - np.floor(pos), 0.0, 1.0)
    w_hi = np.where(pos < 0, 0.0, w_hi)
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - w_hi)
    np.add.at(m, (np.arange(n_out), hi), w_hi)
    return m


def resize_bilinear(images: np.ndarray, out_h: int, out_w: int, dtype=np.float32) -> np.ndarray:
    """Bilinear resize of (..., H, W) arrays to (..., out_h, out_w) by two interpolation matmuls."""
    rh = _interp_matrix(images.shape[-2], out_h).astype(dtype)
    rw = _interp_matrix(images.shape[-1], out_w).astype(dtype)
    return np.einsum("ph,...hw,qw->...pq", rh, images.astype(dtype), rw)


@functools.lru_cache(maxsize=8)
def upscaled_digits(size: int) -> np.ndarray:
    """All source digits upscaled to (1797, size, size), a zero border first so strokes fade out."""
    images, _ = source_digits()
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    # float64, rounded: last-bit BLAS differences between machines vanish, so masks and images match.
    up = np.round(resize_bilinear(padded, size, size, dtype=np.float64), 6)
    return np.clip(up, 0.0, 1.0).astype(np.float32)


def _paste_max(canvas, n_idx, ys, xs, patches):
    """canvas[n, y:y+s, x:x+s, :] = max(canvas, patches) for each row n; patches (k, s, s, C)."""
    s = patches.shape[1]
    ar = np.arange(s)
    rows = ys[:, None, None] + ar[None, :, None]
    cols = xs[:, None, None] + ar[None, None, :]
    n3 = n_idx[:, None, None]
    canvas[n3, rows, cols] = np.maximum(canvas[n3, rows, cols], patches)


def _draw_clutter(canvas, rng, pool, spec):
    """Paste `num_clutter` fragments cut from random pool digits at random canvas positions."""
    n = canvas.shape[0]
    f, side, width = spec.fragment_size, spec.canvas_size, spec.width
    n_idx = np.arange(n)
    for _ in range(spec.num_clutter):
        size = rng.choice(spec.digit_sizes)
        digits = upscaled_digits(size)[rng.choice(pool, n)]
        oy, ox = rng.integers(0, size - f + 1, (2, n))
        rows = oy[:, None, None] + np.arange(f)[:, None]
        cols = ox[:, None, None] + np.arange(f)
        frag = digits[n_idx[:, None, None], rows, cols]
        color = rng.uniform(0.4, 0.9, (n, 1, 1, spec.channels)).astype(np.float32)
        ys, xs = rng.integers(0, side - f + 1, n), rng.integers(0, width - f + 1, n)  # square: as (2, n)
        _paste_max(canvas, n_idx, ys, xs, frag[..., None] * color)


def _place(rng, sizes, active, side):
    """Top-left corners (n, k) for squares of side `sizes` (n, k), non-overlapping; drops unplaceable."""
    n, k = sizes.shape
    ys = np.zeros((n, k), np.int64)
    xs = np.zeros((n, k), np.int64)
    active = active.copy()
    for j in range(k):
        hi = side - sizes[:, j] + 1
        cy = (rng.random((n, PLACEMENT_TRIES)) * hi[:, None]).astype(np.int64)
        cx = (rng.random((n, PLACEMENT_TRIES)) * hi[:, None]).astype(np.int64)
        ok = np.ones((n, PLACEMENT_TRIES), bool)
        for i in range(j):
            sep_y = (cy + sizes[:, j, None] <= ys[:, i, None]) | (ys[:, i, None] + sizes[:, i, None] <= cy)
            sep_x = (cx + sizes[:, j, None] <= xs[:, i, None]) | (xs[:, i, None] + sizes[:, i, None] <= cx)
            ok &= sep_y | sep_x | ~active[:, i, None]
        first = np.argmax(ok, axis=1)
        ys[:, j] = cy[np.arange(n), first]
        xs[:, j] = cx[np.arange(n), first]
        active[:, j] &= ok.any(axis=1)
    return ys, xs, active


def _place_in_row(rng, sizes, active, height, width):
    """Top-left corners (n, k) for a row of squares of side `sizes` (n, k), left to right and apart along
    x: the width left over by the active squares is cut into k + 1 random gaps. Every square fits (the
    spec checks max_digits * the largest side <= width)."""
    used = np.where(active, sizes, 0)
    free = width - used.sum(axis=1, keepdims=True)
    cuts = np.minimum((rng.random(sizes.shape) * (free + 1)).astype(np.int64), free)
    cuts = np.sort(np.where(active, cuts, free), axis=1)  # the active squares' cuts first, in order
    xs = cuts + np.cumsum(used, axis=1) - used
    ys = (rng.random(sizes.shape) * (height - sizes + 1)).astype(np.int64)
    return ys, xs, active


def _tight_boxes(ink: np.ndarray, ys: np.ndarray, xs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (ymin, xmin, ymax, xmax) around the True pixels of `ink` (n, s, s) pasted at ys, xs."""
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    s = ink.shape[1]
    r0, r1 = rows.argmax(1), s - 1 - rows[:, ::-1].argmax(1)
    c0, c1 = cols.argmax(1), s - 1 - cols[:, ::-1].argmax(1)
    pixels = np.stack([ys + r0, xs + c0, ys + r1 + 1, xs + c1 + 1], axis=1).astype(np.float32)
    return pixels / np.array([height, width, height, width], np.float32)


def synthesize(rng: np.random.Generator, pool: np.ndarray, n: int, spec: SynthSpec) -> list[dict]:
    """Draw `n` examples using only the source digits whose indices are in `pool`.

    Returns a list of dicts: image uint8 (H, W, C); label int64 (class of the main digit); boxes float32
    (k, 4) normalised (ymin, xmin, ymax, xmax), tight around each digit's mask pixels; box_labels int64
    (k,); source_ids int64 (k,) (index into `source_digits()`); mask uint8 (H, W), 0 = background,
    class + 1 on digit pixels. The main digit is always first. With ``spec.reading`` the digits are in
    reading order (left to right) and ``sequence`` int64 (max_digits + 1,) holds their classes, then
    `END_TOKEN`, then `PAD_TOKEN` up to the end.
    """
    _, labels = source_digits()
    side, width, k, c = spec.canvas_size, spec.width, spec.max_digits, spec.channels
    canvas = np.zeros((n, side, width, c), np.float32)
    mask = np.zeros((n, side, width), np.uint8)
    _draw_clutter(canvas, rng, pool, spec)

    count = rng.integers(spec.min_digits, spec.max_digits + 1, n)
    active = np.arange(k)[None, :] < count[:, None]
    size_choice = rng.integers(0, len(spec.digit_sizes), (n, k))
    sizes = np.asarray(spec.digit_sizes)[size_choice]
    ids = rng.choice(pool, (n, k))
    if spec.reading:
        ys, xs, active = _place_in_row(rng, sizes, active, side, width)
    else:
        ys, xs, active = _place(rng, sizes, active, side)
    color = rng.uniform(0.75, 1.0, (n, k, c)).astype(np.float32)
    boxes = np.zeros((n, k, 4), np.float32)
    for j in range(k):
        for size in spec.digit_sizes:
            sel = np.nonzero(active[:, j] & (sizes[:, j] == size))[0]
            if sel.size == 0:
                continue
            glyph = upscaled_digits(size)[ids[sel, j]]
            _paste_max(canvas, sel, ys[sel, j], xs[sel, j], glyph[..., None] * color[sel, j, None, None, :])
            ink = glyph >= MASK_THRESHOLD
            _paste_mask(mask, sel, ys[sel, j], xs[sel, j], ink, labels[ids[sel, j]] + 1)
            boxes[sel, j] = _tight_boxes(ink, ys[sel, j], xs[sel, j], side, width)

    image = np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)
    out = []
    for i in range(n):
        keep = active[i]
        out.append(
            {
                "image": image[i],
                "label": labels[ids[i, 0]],
                "boxes": boxes[i, keep],
                "box_labels": labels[ids[i, keep]],
                "source_ids": ids[i, keep].astype(np.int64),
                "mask": mask[i],
            }
        )
        if spec.reading:
            out[-1]["sequence"] = reading_sequence(labels[ids[i, keep]], k)
    return out


def reading_sequence(digits: np.ndarray, max_digits: int) -> np.ndarray:
    """int64 (max_digits + 1,): the digit classes, `END_TOKEN`, then `PAD_TOKEN` to the end."""
    sequence = np.full(max_digits + 1, PAD_TOKEN, np.int64)
    sequence[: len(digits)] = digits
    sequence[len(digits)] = END_TOKEN
    return sequence


def _paste_mask(mask, n_idx, ys, xs, ink, values):
    """mask[n, y:y+s, x:x+s] = values[n] where ink is True (squares of one example never overlap)."""
    s = ink.shape[1]
    ar = np.arange(s)
    rows = ys[:, None, None] + ar[None, :, None]
    cols = xs[:, None, None] + ar[None, None, :]
    n3 = n_idx[:, None, None]
    mask[n3, rows, cols] = np.where(ink, values[:, None, None].astype(np.uint8), mask[n3, rows, cols])
