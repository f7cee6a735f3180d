"""The reading task of the training loop: its loss and evaluator against values written out here."""

from __future__ import annotations

import numpy as np
import pytest

from attn_jax.train.tasks import make_task
from tests._train_models import load_experiment_config, synthetic_meta


def _task(penalty: float, beam_width: int = 1, smoothing: float = 0.0):
    config = load_experiment_config("reading")
    config.reading.attention_penalty, config.reading.beam_width = penalty, beam_width
    config.reading.label_smoothing = smoothing
    return make_task(config, synthetic_meta("reading"))


def _reference_loss(logits, alpha, targets, end, weight, smoothing=0.0):
    """NumPy float64: CE over the steps up to and including the first END / their number, plus weight x
    the mean over examples of the mean over positions of (1 - sum over those steps of alpha)^2. With
    smoothing s the target of a step puts 1 - s + s / V on its token and s / V on each other token."""
    logits, alpha = np.asarray(logits, np.float64), np.asarray(alpha, np.float64)
    ce, steps, penalty = 0.0, 0, 0.0
    for b in range(len(targets)):
        counted = []
        for t, token in enumerate(targets[b]):
            counted.append(t)
            if token == end:
                break
        for t in counted:
            z = logits[b, t] - logits[b, t].max()
            log_p = z - np.log(np.exp(z).sum())
            ce -= (1.0 - smoothing) * log_p[targets[b][t]] + smoothing * log_p.mean()
        steps += len(counted)
        penalty += np.mean((1.0 - alpha[b, counted].sum(0)) ** 2)
    return ce / steps + weight * penalty / len(targets)


@pytest.mark.parametrize(("penalty", "smoothing"), [(0.0, 0.0), (0.5, 0.0), (0.0, 0.1)])
def test_reading_loss_is_the_sequence_cross_entropy_plus_the_penalty(penalty, smoothing):
    rng = np.random.default_rng(0)
    task = _task(penalty, smoothing=smoothing)
    targets = np.array([[3, 10, 11, 11, 11], [1, 2, 9, 10, 11], [4, 4, 4, 4, 10]])  # END at 1, 3, 4
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    alpha = rng.dirichlet(np.ones(6), size=(3, 5)).astype(np.float32)
    loss, sums = task.loss((logits, alpha), {"sequence": targets}, None)
    want = _reference_loss(logits, alpha, targets, 10, penalty, smoothing)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(sums["steps"]) == 2 + 4 + 5 and float(sums["examples"]) == 3
    got = task.train_metrics({k: np.asarray(v) for k, v in sums.items()})
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
    right = sum(
        int(np.argmax(logits[b, t]) == targets[b, t]) for b, n in enumerate((2, 4, 5)) for t in range(n)
    )
    assert got["token_accuracy"] == pytest.approx(right / 11)


def test_reading_evaluator_counts_sequences_edits_pointing_and_the_beam():
    task = _task(0.0, beam_width=2)
    evaluator = task.evaluator()
    targets = np.array([[3, 0, 7, 10, 11], [5, 10, 11, 11, 11], [1, 10, 11, 11, 11]])
    per_example = {
        "tokens": np.array([[3, 7, 10, 10, 10], [5, 10, 10, 10, 10], [2, 2, 10, 10, 10]]),
        "beam_tokens": np.array([[3, 0, 7, 10, 10], [5, 10, 10, 10, 10], [2, 2, 10, 10, 10]]),
        "targets": targets,
        "pointing": np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
        "pointing_valid": np.array(
            [[True, True, True, False], [True, False, False, False], [True] + [False] * 3]
        ),
        "valid": np.array([True, True, False]),  # the third is padding: it counts for nothing
    }
    evaluator.add({}, per_example)
    got = evaluator.result()
    # greedy: "37" vs "307" (1 edit of 3), "5" right; beam: both right; pointing: 1 + 0 + 1 + 1 of 4 steps
    assert got["sequence_accuracy"] == 0.5 and got["character_error_rate"] == pytest.approx(1 / 4)
    assert got["beam_sequence_accuracy"] == 1.0 and got["beam_character_error_rate"] == 0.0
    assert got["pointing_game"] == pytest.approx(3 / 4) and got["count"] == 2


def test_the_reader_config_is_additive_only():
    assert load_experiment_config("reading").model.attention == "additive"
    with pytest.raises(ValueError, match="the reader's attention is additive; got 'cbam'"):
        load_experiment_config("reading", "cbam,tiny")


def test_the_beams_length_penalty_comes_from_the_config_and_old_runs_rank_by_the_sum():
    config = load_experiment_config("reading")
    assert config.reading.length_penalty == 1.0  # the default: GNMT's normalisation by length
    config.reading.length_penalty = 0.7
    assert make_task(config, synthetic_meta("reading")).build_model().length_penalty == 0.7
    with config.unlocked():
        del config.reading["length_penalty"]  # a run saved before the field existed
    assert make_task(config, synthetic_meta("reading")).build_model().length_penalty == 0.0
