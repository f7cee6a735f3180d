"""Reading metrics: edit distance, character error rate, sequence accuracy and the per-step pointing game.

Token sequences are int arrays (B, T) that end at their first END token (``end_token``); whatever follows
it (END again, PAD) is not part of the sequence, and a row without END is its T tokens. The text metrics are
NumPy on the host; `step_pointing_game` is jnp (it runs inside a jitted eval step). `ReadingStats` keeps
(sum, count) pairs over an eval set; with nothing added its scores are NaN, the convention of every
evaluator in `attn_jax.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def edit_distance(prediction: Sequence[int], target: Sequence[int]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning one into the other.

    Args:
      prediction: a sequence of tokens (ints).
      target: a sequence of tokens (ints).

    Returns:
      The distance, an int >= 0.

    Examples:
      >>> edit_distance([3, 0, 7], [3, 7]), edit_distance([1, 2, 3], [3, 2, 1]), edit_distance([], [5, 5])
      (1, 2, 2)
    """
    a, b = np.asarray(prediction).reshape(-1), np.asarray(target).reshape(-1)
    row = np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        previous, row = row, np.empty_like(row)
        row[0] = i
        substitute = previous[:-1] + (a[i - 1] != b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, substitute[j - 1])
    return int(row[-1])


def strip_end(tokens: Sequence[int], end_token: int) -> np.ndarray:
    """The tokens before the first END (all of them without END).

    Examples:
      >>> strip_end([3, 0, 10, 11, 11], end_token=10).tolist()
      [3, 0]
    """
    tokens = np.asarray(tokens).reshape(-1)
    ends = np.flatnonzero(tokens == end_token)
    return tokens[: ends[0]] if ends.size else tokens


def _rows(predictions, targets, valid):
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if predictions.ndim != 2 or targets.ndim != 2 or len(predictions) != len(targets):
        raise ValueError(
            f"predictions and targets must be (B, T) and (B, T') with one B; got shapes {predictions.shape}, "
            f"{targets.shape}"
        )
    keep = np.ones(len(targets), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if keep.shape != (len(targets),):
        raise ValueError(f"valid must be ({len(targets)},); got shape {np.shape(valid)}")
    return predictions[keep], targets[keep]


def edit_distances(predictions, targets, end_token: int, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-example edit distances between predicted and target sequences, and the targets' lengths.

    Args:
      predictions: int (B, T), e.g. `attn_jax.models.Decoded` tokens.
      targets: int (B, T'), e.g. cluttered_digits' ``sequence``.
      end_token: the END token.
      valid: optional bool (B,); False drops padded examples.

    Returns:
      (distances int64 (B_valid,), target lengths int64 (B_valid,)).

    Raises:
      ValueError: predictions or targets not 2-D with one batch size, or ``valid`` not (B,).

    Examples:
      >>> d, n = edit_distances([[3, 7, 10], [5, 10, 10]], [[3, 0, 7], [5, 10, 11]], end_token=10)
      >>> d.tolist(), n.tolist()
      ([1, 0], [3, 1])
    """
    predictions, targets = _rows(predictions, targets, valid)
    pairs = [(strip_end(p, end_token), strip_end(t, end_token)) for p, t in zip(predictions, targets)]
    distances = np.array([edit_distance(p, t) for p, t in pairs], np.int64)
    return distances, np.array([len(t) for _, t in pairs], np.int64)


def character_error_rate(predictions, targets, end_token: int, valid=None) -> float:
    """Character error rate: the summed edit distances over the summed target lengths (corpus-level).

    Args:
      predictions: int (B, T).
      targets: int (B, T').
      end_token: the END token.
      valid: optional bool (B,); False drops padded examples.

    Returns:
      The rate (it can exceed 1 when predictions are longer than targets); NaN without a target token.

    Raises:
      ValueError: as `edit_distances`.

    Examples:
      >>> character_error_rate([[3, 7, 10], [5, 10, 10]], [[3, 0, 7], [5, 10, 11]], end_token=10)
      0.25
    """
    distances, lengths = edit_distances(predictions, targets, end_token, valid)
    return float(distances.sum() / lengths.sum()) if lengths.sum() else float("nan")


def sequence_matches(predictions, targets, end_token: int, valid=None) -> np.ndarray:
    """Whether each predicted sequence equals its target up to their first END.

    Args:
      predictions: int (B, T).
      targets: int (B, T').
      end_token: the END token.
      valid: optional bool (B,); False drops padded examples.

    Returns:
      bool (B_valid,).

    Raises:
      ValueError: as `edit_distances`.

    Examples:
      >>> sequence_matches([[3, 7, 10], [5, 10, 10]], [[3, 0, 7], [5, 10, 11]], end_token=10).tolist()
      [False, True]
    """
    predictions, targets = _rows(predictions, targets, valid)
    return np.array(
        [
            np.array_equal(strip_end(p, end_token), strip_end(t, end_token))
            for p, t in zip(predictions, targets)
        ],
        bool,
    )


def sequence_accuracy(predictions, targets, end_token: int, valid=None) -> float:
    """The fraction of examples whose whole sequence is read right (`sequence_matches`); NaN without one.

    Examples:
      >>> sequence_accuracy([[3, 7, 10], [5, 10, 10]], [[3, 0, 7], [5, 10, 11]], end_token=10)
      0.5
    """
    matches = sequence_matches(predictions, targets, end_token, valid)
    return float(matches.mean()) if matches.size else float("nan")


def step_pointing_game(attention: jax.Array, boxes: jax.Array, box_valid: jax.Array, grid_shape) -> jax.Array:
    """Per-step pointing game: does step t's attention maximum lie on digit t's box?

    The n = h * w weights of a step form the (h, w) feature grid (row-major); cell (r, c) stands for the
    image block [r / h, (r + 1) / h) x [c / w, (c + 1) / w) (normalised), and the maximal cell counts as
    a hit when its block overlaps box t (a positive area in common: a cell is coarser than a thin digit's
    box, so a centre test could miss a right answer). Ties count fractionally, as in
    `attn_jax.metrics.pointing_game`. Step t is scored against box t for t < min(T, K): with boxes in
    reading order, the steps that emit digits.

    Args:
      attention: alpha, float (B, T, n).
      boxes: float (B, K, 4) normalised (ymin, xmin, ymax, xmax), in reading order.
      box_valid: bool (B, K); False: no digit t (its step scores 0 and should not be counted).
      grid_shape: (h, w) with h * w = n (static under jit).

    Returns:
      float32 (B, S), S = min(T, K): the score of each step, 0 where box_valid is False. The game's value
      is the sum over the valid entries over their number (`ReadingStats` keeps both).

    Raises:
      ValueError: attention not (B, T, n) with n = h * w, or boxes / box_valid of other shapes.

    Examples:
      >>> import jax.numpy as jnp
      >>> alpha = jnp.zeros((1, 2, 8)).at[0, 0, 1].set(1.0).at[0, 1, 6].set(1.0)  # a 2 x 4 grid
      >>> boxes = jnp.array([[[0.0, 0.3, 0.4, 0.45], [0.0, 0.5, 1.0, 1.0]]])
      >>> step_pointing_game(alpha, boxes, jnp.array([[True, True]]), grid_shape=(2, 4))
      Array([[1., 1.]], dtype=float32)
    """
    h, w = grid_shape
    if attention.ndim != 3 or attention.shape[-1] != h * w:
        raise ValueError(f"attention must be (B, T, n = {h} * {w}); got shape {attention.shape}")
    b, t = attention.shape[:2]
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[-1] != 4 or box_valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"boxes must be (B={b}, K, 4) and box_valid (B, K); got shapes {boxes.shape}, {box_valid.shape}"
        )
    s = min(t, boxes.shape[1])
    maps = attention[:, :s].astype(jnp.float32).reshape(b, s, h, w)
    top = maps >= jnp.max(maps, axis=(2, 3), keepdims=True)
    box = boxes[:, :s, None, None, :].astype(jnp.float32)  # (B, S, 1, 1, 4)
    rows, cols = jnp.arange(h, dtype=jnp.float32)[:, None], jnp.arange(w, dtype=jnp.float32)[None, :]
    overlap_y = (rows / h < box[..., 2]) & ((rows + 1) / h > box[..., 0])
    overlap_x = (cols / w < box[..., 3]) & ((cols + 1) / w > box[..., 1])
    hits = jnp.sum(top & overlap_y & overlap_x, axis=(2, 3)) / jnp.sum(top, axis=(2, 3))
    return jnp.where(box_valid[:, :s], hits, 0.0).astype(jnp.float32)


@dataclasses.dataclass
class ReadingStats:
    """Averages the reading metrics over an eval set, batch by batch, on the host.

    Args:
      matches: examples read right so far.
      edits: summed edit distances so far.
      target_tokens: summed target lengths so far.
      examples: examples so far.
      pointing_sum: summed `step_pointing_game` scores of the valid steps so far.
      pointing_steps: valid steps scored so far.

    Examples:
      >>> stats = ReadingStats()
      >>> stats.update([[3, 7, 10], [5, 10, 10]], [[3, 0, 7], [5, 10, 11]], end_token=10)
      >>> stats.compute()
      {'sequence_accuracy': 0.5, 'character_error_rate': 0.25, 'pointing_game': nan, 'count': 2}
    """

    matches: int = 0
    edits: int = 0
    target_tokens: int = 0
    examples: int = 0
    pointing_sum: float = 0.0
    pointing_steps: int = 0

    def update(self, predictions, targets, end_token: int, valid=None, pointing=None, pointing_valid=None):
        """Add a batch.

        Args:
          predictions: int (B, T) predicted tokens.
          targets: int (B, T') target tokens.
          end_token: the END token.
          valid: optional bool (B,); False drops padded examples (from the pointing game too).
          pointing: optional `step_pointing_game` scores (B, S).
          pointing_valid: bool (B, S) with ``pointing``: the steps that count (box_valid[:, :S]).

        Raises:
          ValueError: as `edit_distances`, or ``pointing`` without a ``pointing_valid`` of its shape.
        """
        distances, lengths = edit_distances(predictions, targets, end_token, valid)
        self.matches += int(sequence_matches(predictions, targets, end_token, valid).sum())
        self.edits += int(distances.sum())
        self.target_tokens += int(lengths.sum())
        self.examples += len(distances)
        if pointing is not None:
            scores = np.asarray(pointing, np.float64)
            counted = np.asarray(pointing_valid, bool) if pointing_valid is not None else None
            if counted is None or counted.shape != scores.shape:
                raise ValueError(
                    f"pointing_valid must have the pointing scores' shape {scores.shape}; got "
                    f"{None if counted is None else counted.shape}"
                )
            if valid is not None:
                counted = counted & np.asarray(valid, bool).reshape(-1, 1)
            self.pointing_sum += float(scores[counted].sum())
            self.pointing_steps += int(counted.sum())

    def compute(self) -> dict[str, float]:
        """sequence_accuracy, character_error_rate, pointing_game (NaN without data) and count (examples)."""
        ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
        return {
            "sequence_accuracy": ratio(self.matches, self.examples),
            "character_error_rate": ratio(self.edits, self.target_tokens),
            "pointing_game": ratio(self.pointing_sum, self.pointing_steps),
            "count": self.examples,
        }
