"""make_schedule and make_optimizer against numbers written out by hand: the learning rate at the warmup's
first, last and turning steps and through the cosine decay; AdamW and SGD updates (bias correction,
decoupled and L2 weight decay, momentum), global-norm clipping and skipped non-finite updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.train.optim import make_optimizer, make_schedule

# lr 1e-3, warmup 10 of 110 steps, ending at 0.1 x lr. Warmup: lr * s / 10. Decay over the 100 steps
# after the warmup: 1e-4 + 9e-4 * 0.5 * (1 + cos(pi * (s - 10) / 100)); cos(pi / 4) = 0.70710678.
WARMUP_COSINE = {
    0: 0.0,  # the first update (optimizer count 0) is still at lr 0
    1: 1e-4,
    9: 9e-4,  # warmup - 1
    10: 1e-3,  # warmup: the peak
    35: 1e-4 + 9e-4 * 0.5 * (1 + 0.70710678118),  # a quarter into the decay: 8.6819805e-4
    60: 5.5e-4,  # halfway: 1e-4 + 9e-4 / 2
    85: 1e-4 + 9e-4 * 0.5 * (1 - 0.70710678118),  # 2.3180195e-4
    110: 1e-4,  # the end
    500: 1e-4,  # past the end: stays there
}

# lr 0.1, no warmup, 100 steps to 0: 0.1 * 0.5 * (1 + cos(pi * s / 100))
COSINE = {0: 0.1, 25: 0.05 * (1 + 0.70710678118), 50: 0.05, 75: 0.05 * (1 - 0.70710678118), 100: 0.0}


def _at(schedule, steps):
    return np.asarray(jax.jit(schedule)(np.asarray(steps)), np.float64)


def test_warmup_cosine_schedule_at_written_out_steps():
    schedule = make_schedule(1e-3, total_steps=110, warmup_steps=10, end_factor=0.1)
    steps = sorted(WARMUP_COSINE)
    want = [WARMUP_COSINE[s] for s in steps]
    np.testing.assert_allclose(_at(schedule, steps), want, rtol=1e-6, atol=1e-12, err_msg=f"steps {steps}")


def test_cosine_schedule_without_warmup_at_written_out_steps():
    steps = sorted(COSINE)
    want = [COSINE[s] for s in steps]
    np.testing.assert_allclose(_at(make_schedule(0.1, total_steps=100), steps), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, wanted",
    [
        (dict(lr=1e-3, total_steps=200, warmup_steps=200), "warmup_steps=200"),  # optax: decay_steps 0
        (dict(lr=1e-3, total_steps=100, warmup_steps=200), "warmup_steps=200"),
        (dict(lr=1e-3, total_steps=0), "total_steps=0"),
        (dict(lr=-1e-3, total_steps=10), "lr=-0.001"),
        (dict(lr=float("nan"), total_steps=10), "lr=nan"),
        (dict(lr=1e-3, total_steps=10, end_factor=-0.5), "end_factor=-0.5"),
    ],
)
def test_schedule_out_of_range_is_one_line_naming_the_argument(kwargs, wanted):
    with pytest.raises(ValueError) as err:
        make_schedule(**kwargs)
    assert wanted in str(err.value) and len(str(err.value).splitlines()) == 1, err.value


def _updates(tx, params, grads_list):
    """Parameters after applying tx's updates for each gradient in turn (float32, as in training; one
    compiled program)."""

    def run(params, grads):
        state, out = tx.init(params), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = params + updates
            out.append(params)
        return out

    grads = [jnp.asarray(g, jnp.float32) for g in grads_list]
    return [np.asarray(p) for p in jax.jit(run)(jnp.asarray(params, jnp.float32), grads)]


def test_adamw_two_updates_match_hand_computed_values():
    # p = [1, -2], g1 = [0.5, -0.25], g2 = [0.1, 0.3]; lr 0.1 cosine over 4 steps, weight decay 0.01,
    # b1 0.9, b2 0.999, eps 1e-8.
    # update 1 (lr 0.1): m = [0.05, -0.025], v = [2.5e-4, 6.25e-5]; bias-corrected m/sqrt(v) = sign(g1)
    #   p1 = p - 0.1 * ([1, -1] + 0.01 * p) = [0.899, -1.898]
    # update 2 (lr 0.1 * 0.5 * (1 + cos(pi / 4)) = 0.0853553391): m = [0.055, 0.0075],
    #   v = [2.5975e-4, 1.524375e-4]; m_hat = m / 0.19 = [0.2894737, 0.0394737],
    #   v_hat = v / 0.001999 = [0.1299400, 0.0762569]; m_hat / sqrt(v_hat) = [0.8030468, 0.1429450]
    #   p2 = p1 - 0.0853553391 * ([0.8030468, 0.1429450] + 0.01 * p1) = [0.8296888, -1.9085811]
    tx = make_optimizer("adamw", lr=0.1, total_steps=4, weight_decay=0.01)
    p1, p2 = _updates(tx, [1.0, -2.0], [[0.5, -0.25], [0.1, 0.3]])
    np.testing.assert_allclose(p1, [0.899, -1.898], rtol=1e-6)
    np.testing.assert_allclose(p2, [0.8296888, -1.9085811], rtol=1e-5)  # float32 rounding: 1.6e-6


def test_adamw_first_update_with_warmup_is_zero_and_the_second_at_lr_over_warmup():
    # warmup 4: update 1 at lr 0 leaves p; update 2 at lr 0.1 / 4 = 0.025, but Adam's moments carry g1:
    # m = 0.9 * 0.1 * 0.5 + 0.1 * 0.5 = 0.095, v = 0.999 * 0.001 * 0.25 + 0.001 * 0.25 = 4.9975e-4,
    # m_hat = 0.095 / 0.19 = 0.5, v_hat = 4.9975e-4 / 0.001999 = 0.25: step 1, p = 1 - 0.025 = 0.975
    tx = make_optimizer("adamw", lr=0.1, total_steps=100, warmup_steps=4)
    p1, p2 = _updates(tx, [1.0], [[0.5], [0.5]])
    np.testing.assert_array_equal(p1, [1.0])
    np.testing.assert_allclose(p2, [0.975], rtol=1e-6)


def test_sgd_momentum_and_l2_weight_decay_match_hand_computed_values():
    # lr 0.1 cosine over 2 steps (update 2 at 0.1 * 0.5 * (1 + cos(pi / 2)) = 0.05), momentum 0.9, L2 0.5;
    # p = [1, -2], g = [1, 2] both times
    # update 1: g' = g + 0.5 * p = [1.5, 1]; trace = g'; p1 = p - 0.1 * g' = [0.85, -2.1]
    # update 2: g' = g + 0.5 * p1 = [1.425, 0.95]; trace = g' + 0.9 * [1.5, 1] = [2.775, 1.85]
    #   p2 = p1 - 0.05 * trace = [0.71125, -2.1925]
    tx = make_optimizer("sgd", lr=0.1, total_steps=2, momentum=0.9, weight_decay=0.5)
    p1, p2 = _updates(tx, [1.0, -2.0], [[1.0, 2.0], [1.0, 2.0]])
    np.testing.assert_allclose(p1, [0.85, -2.1], rtol=1e-6)
    np.testing.assert_allclose(p2, [0.71125, -2.1925], rtol=1e-6)


def test_global_norm_clipping_scales_a_large_gradient_to_the_norm_and_leaves_a_small_one():
    # plain SGD, lr 0.1 (constant over update 1 of 1000), clip 1: g = [3, 4] has norm 5 -> [0.6, 0.8]
    tx = make_optimizer("sgd", lr=0.1, total_steps=1000, momentum=0.0, clip_norm=1.0)
    (big,) = _updates(tx, [0.0, 0.0], [[3.0, 4.0]])
    np.testing.assert_allclose(big, [-0.06, -0.08], rtol=1e-6)
    (small,) = _updates(tx, [0.0, 0.0], [[0.3, 0.4]])  # norm 0.5: unchanged
    np.testing.assert_allclose(small, [-0.03, -0.04], rtol=1e-6)


def test_clipping_comes_before_the_l2_term():
    # g = [3, 4] clipped to [0.6, 0.8], then + 0.5 * p = [0.5, 1]: p1 = [1, 2] - 0.1 * [1.1, 1.8]
    tx = make_optimizer("sgd", lr=0.1, total_steps=1000, momentum=0.0, clip_norm=1.0, weight_decay=0.5)
    (p1,) = _updates(tx, [1.0, 2.0], [[3.0, 4.0]])
    np.testing.assert_allclose(p1, [0.89, 1.82], rtol=1e-6)


def test_skip_nonfinite_leaves_params_and_state_unchanged_by_a_nan_gradient():
    # the NaN update is skipped; the next one is the optimizer's first: plain SGD at lr 0.1 (count 0)
    tx = make_optimizer("sgd", lr=0.1, total_steps=1000, momentum=0.9, skip_nonfinite=3)
    skipped, applied = _updates(tx, [1.0], [[float("nan")], [2.0]])
    np.testing.assert_array_equal(skipped, [1.0])
    np.testing.assert_allclose(applied, [0.8], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, wanted",
    [
        (dict(name="lamb"), "unknown optimizer 'lamb'"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(weight_decay=-1e-4), "weight_decay=-0.0001"),
        (dict(clip_norm=-1.0), "clip_norm=-1.0"),
        (dict(skip_nonfinite=-1), "skip_nonfinite=-1"),
    ],
)
def test_optimizer_out_of_range_is_one_line_naming_the_argument(kwargs, wanted):
    args = dict(name="adamw", lr=1e-3, total_steps=10) | kwargs
    with pytest.raises(ValueError) as err:
        make_optimizer(args.pop("name"), **args)
    assert wanted in str(err.value) and len(str(err.value).splitlines()) == 1, err.value
