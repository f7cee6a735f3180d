"""Reading losses and metrics against hand-written tables and NumPy float64: edit distance, character error
rate, sequence accuracy, the per-step pointing game, the masked sequence cross-entropy and the doubly
stochastic penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.losses import (
    doubly_stochastic_penalty,
    sequence_cross_entropy,
    sequence_cross_entropy_sums,
    steps_up_to_end,
)
from attn_jax.metrics import (
    ReadingStats,
    character_error_rate,
    edit_distance,
    edit_distances,
    sequence_accuracy,
    sequence_matches,
    step_pointing_game,
    strip_end,
)

END, PAD = 10, 11


@pytest.mark.parametrize(
    "prediction, target, distance",
    [
        ([], [], 0),
        ([1], [], 1),
        ([], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 2, 3], [1, 9, 3], 1),  # one substitution
        ([1, 2, 3], [3, 2, 1], 2),
        ([1, 2], [2, 1], 2),
        ([0, 1, 2, 3], [1, 2, 3, 4], 2),  # delete the first, insert the last
        ([5, 5, 5], [5], 2),
        ([1, 3, 5, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9], 4),
        ([1, 2, 3, 4, 5, 6], [7, 1, 1, 2, 3], 5),  # insert 7 and 1 before 1 2 3, delete 4 5 6
        ([3, 0, 7], [3, 7], 1),
    ],
)
def test_edit_distance_table(prediction, target, distance):
    assert edit_distance(prediction, target) == distance
    assert edit_distance(target, prediction) == distance  # symmetric


def test_kitten_sitting():
    to_ints = lambda word: [ord(ch) for ch in word]  # noqa: E731
    assert edit_distance(to_ints("kitten"), to_ints("sitting")) == 3
    assert edit_distance(to_ints("flaw"), to_ints("lawn")) == 2
    assert edit_distance(to_ints("intention"), to_ints("execution")) == 5


def test_sequences_end_at_their_first_end_token():
    assert strip_end([3, 0, END, 4, PAD], END).tolist() == [3, 0]
    assert strip_end([END, 1, 2], END).tolist() == []
    assert strip_end([1, 2, 3], END).tolist() == [1, 2, 3]  # no END: all of it


def test_character_error_rate_and_sequence_accuracy_by_hand():
    predictions = [[3, 0, 7, END, END], [5, END, END, END, END], [1, 2, END, 9, 9], [4, 4, 4, 4, 4]]
    targets = [[3, 0, 7, END, PAD], [6, END, PAD, PAD, PAD], [1, 2, 3, END, PAD], [4, END, PAD, PAD, PAD]]
    distances, lengths = edit_distances(predictions, targets, END)
    assert distances.tolist() == [0, 1, 1, 4] and lengths.tolist() == [3, 1, 3, 1]
    assert character_error_rate(predictions, targets, END) == pytest.approx(6 / 8)
    assert sequence_matches(predictions, targets, END).tolist() == [True, False, False, False]
    assert sequence_accuracy(predictions, targets, END) == 0.25
    valid = [True, True, True, False]  # the last row is padding: left out
    assert character_error_rate(predictions, targets, END, valid) == pytest.approx(2 / 7)
    assert sequence_accuracy(predictions, targets, END, valid) == pytest.approx(1 / 3)
    assert np.isnan(sequence_accuracy(predictions, targets, END, [False] * 4))
    assert np.isnan(character_error_rate(predictions, targets, END, [False] * 4))


def test_reading_stats_accumulate_batches():
    stats = ReadingStats()
    assert all(np.isnan(v) for k, v in stats.compute().items() if k != "count")
    stats.update([[3, END, END]], [[3, END, PAD]], END, pointing=[[1.0, 0.0]], pointing_valid=[[True, False]])
    stats.update([[1, 2, END], [0, 0, 0]], [[1, 3, END], [7, END, PAD]], END, valid=[True, False],
                 pointing=[[0.5, 0.25], [1.0, 1.0]], pointing_valid=[[True, True], [True, True]])  # fmt: skip
    result = stats.compute()
    assert result == {
        "sequence_accuracy": 0.5,
        "character_error_rate": pytest.approx(1 / 3),
        "pointing_game": pytest.approx((1.0 + 0.5 + 0.25) / 3),
        "count": 2,
    }
    with pytest.raises(ValueError, match="pointing_valid must have the pointing scores' shape"):
        stats.update([[1]], [[1]], END, pointing=[[1.0]])


def test_step_pointing_game_by_hand():
    h, w = 2, 4  # cell (r, c) covers rows [r/2, (r+1)/2), columns [c/4, (c+1)/4)
    alpha = np.zeros((2, 3, h * w), np.float32)
    alpha[0, 0, 1] = 1.0  # (0, 1): columns [0.25, 0.5)
    alpha[0, 1, 6] = 1.0  # (1, 2): columns [0.5, 0.75)
    alpha[0, 2, 7] = 1.0  # the END step: no box
    alpha[1, 0, [0, 5]] = 0.5  # a tie: (0, 0) inside box 0, (1, 1) outside
    alpha[1, 1] = 1 / 8  # uniform: every cell ties
    boxes = np.array(
        [
            [
                [0.0, 0.3, 0.4, 0.45],
                [0.0, 0.75, 1.0, 1.0],
                [0, 0, 0, 0],
            ],  # box 1 only touches cell (1, 2)'s edge
            [[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.5, 0.5], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    valid = np.array([[True, True, False], [True, True, False]])
    scores = step_pointing_game(jnp.asarray(alpha), jnp.asarray(boxes), jnp.asarray(valid), (h, w))
    np.testing.assert_allclose(scores, [[1.0, 0.0, 0.0], [0.5, 2 / 8, 0.0]])
    jitted = jax.jit(step_pointing_game, static_argnums=3)
    np.testing.assert_allclose(jitted(alpha, boxes, valid, (h, w)), scores)
    # fewer boxes than steps: S = min(T, K)
    assert step_pointing_game(jnp.asarray(alpha), jnp.asarray(boxes[:, :2]), jnp.asarray(valid[:, :2]),
                              (h, w)).shape == (2, 2)  # fmt: skip


def test_step_pointing_game_checks_shapes():
    alpha, boxes, valid = jnp.zeros((1, 2, 8)), jnp.zeros((1, 2, 4)), jnp.ones((1, 2), bool)
    with pytest.raises(ValueError, match=r"attention must be \(B, T, n = 3 \* 3\)"):
        step_pointing_game(alpha, boxes, valid, (3, 3))
    with pytest.raises(ValueError, match="boxes must be"):
        step_pointing_game(alpha, boxes[..., :3], valid, (2, 4))


def test_steps_up_to_end():
    tokens = jnp.array([[3, END, PAD, PAD], [END, PAD, PAD, PAD], [1, 2, 3, 4], [1, END, END, 2]])
    np.testing.assert_array_equal(
        steps_up_to_end(tokens, END),
        [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]],
    )


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_sequence_cross_entropy_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 11)).astype(np.float32) * 3
    targets = np.array([[3, 0, END, PAD, PAD], [END, PAD, PAD, PAD, PAD], [1, 2, 3, 4, END]])
    mask = np.asarray(steps_up_to_end(jnp.asarray(targets), END))
    logp = _log_softmax64(logits)
    rows, cols = np.nonzero(mask)
    want = -logp[rows, cols, targets[rows, cols]]
    total, count = sequence_cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(count) == 9
    np.testing.assert_allclose(float(total), want.sum(), rtol=1e-6)
    loss = sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-6)  # PAD (11, outside V) never read
    grads = jax.grad(lambda x: sequence_cross_entropy(x, jnp.asarray(targets), jnp.asarray(mask)))(logits)
    assert np.isfinite(grads).all() and not np.asarray(grads)[~mask].any()
    none = sequence_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((3, 5), bool))
    assert float(none) == 0.0


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("weight, target", [(1.0, 1.0), (0.3, 0.25)])
def test_doubly_stochastic_penalty_against_numpy(use_mask, weight, target):
    rng = np.random.default_rng(1)
    alpha = np.exp(_log_softmax64(2 * rng.standard_normal((4, 5, 7))))  # (B, T, n), rows sum to 1
    mask = rng.random((4, 5)) < 0.6 if use_mask else np.ones((4, 5), bool)
    want = 0.0
    for b in range(4):
        column_sums = sum(alpha[b, t] for t in range(5) if mask[b, t])
        want += sum((target - column_sums[i]) ** 2 for i in range(7))
    want = weight * want / 4
    got = doubly_stochastic_penalty(jnp.asarray(alpha, jnp.float32), jnp.asarray(mask) if use_mask else None,
                                    weight=weight, target=target)  # fmt: skip
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_loss_shape_checks():
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 3\); got shape \(2, 4\)"):
        doubly_stochastic_penalty(jnp.zeros((2, 3, 5)), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="attention must be 3-D"):
        doubly_stochastic_penalty(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T\) = \(2, 3\)"):
        sequence_cross_entropy(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), int), jnp.ones((2, 3), bool))
