"""AttentionReader: the decoder step is the formula written out in NumPy, teacher forcing under nn.scan is a
Python loop over steps, beam width 1 is greedy, beam search finds the best sequence where greedy does not,
bf16 compute with float32 parameters, and bad arguments are one-line ValueErrors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.models import AttentionReader, Decoded, ReaderStep
from attn_jax.models import reader as reader_module
from attn_jax.nn import SmallCNN

V, END = 5, 4  # tokens 0-3, END = 4; the start token is 5 (the embedding's extra row)


def _perturbed(params, seed):
    """The same tree with every leaf replaced by N(0, 0.5) values (nonzero biases included), float32."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        tree, [jnp.asarray(0.5 * rng.standard_normal(x.shape), jnp.float32) for x in leaves]
    )


def _jit_apply(model, **static):
    """model.apply with keyword arguments fixed, jitted: one compile instead of op-by-op dispatch."""
    return jax.jit(functools.partial(model.apply, **static))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_step(p, c, s, previous, features):
    """Bahdanau attention with the state as query, beta gate, LSTM (flax's gates), prediction; float64."""
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    c, s, features = f64(c), f64(s), f64(features)
    scores = np.tanh((s @ f64(p["w_q"]) + f64(p["bias"]))[:, None, :] + features @ f64(p["w_k"])) @ f64(
        p["w_a"]
    )
    alpha = np.exp(scores - scores.max(-1, keepdims=True))
    alpha /= alpha.sum(-1, keepdims=True)
    context = np.einsum("bn,bnd->bd", alpha, features)
    beta = _sigmoid(s @ f64(p["beta"]["kernel"]) + f64(p["beta"]["bias"]))  # (B, 1)
    gated = beta * context
    embedded = f64(p["embed"]["embedding"])[previous]
    x = np.concatenate([embedded, gated], -1)
    lstm = p["lstm"]
    gate = lambda g: (
        x @ f64(lstm["i" + g]["kernel"]) + s @ f64(lstm["h" + g]["kernel"]) + f64(lstm["h" + g]["bias"])
    )  # noqa: E731
    i, f, g, o = _sigmoid(gate("i")), _sigmoid(gate("f")), np.tanh(gate("g")), _sigmoid(gate("o"))
    c_new = f * c + i * g
    s_new = o * np.tanh(c_new)
    out = np.concatenate([s_new, gated, embedded], -1)
    logits = out @ f64(p["output"]["kernel"]) + f64(p["output"]["bias"])
    return c_new, s_new, logits, alpha


def test_decoder_step_equals_the_formula_in_numpy():
    b, n, d, hidden = 3, 6, 5, 4
    step = ReaderStep(num_classes=V, hidden_size=hidden, attention_dim=3, embed_size=2)
    rng = np.random.default_rng(0)
    c, s = (jnp.asarray(rng.standard_normal((b, hidden)), jnp.float32) for _ in range(2))
    previous = jnp.array([0, 3, V])  # V: the start token
    features = jnp.asarray(rng.standard_normal((b, n, d)), jnp.float32)
    params = _perturbed(jax.jit(step.init)(jax.random.key(0), (c, s), previous, features)["params"], seed=1)
    (c_new, s_new), (logits, alpha) = _jit_apply(step)({"params": params}, (c, s), previous, features)
    want = _numpy_step(params, c, s, np.asarray(previous), features)
    for got, ref, name in zip((c_new, s_new, logits, alpha), want, ("c", "s", "logits", "alpha")):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-6, err_msg=name)
    assert logits.dtype == alpha.dtype == jnp.float32


def _reader(**kw):
    kw = dict(num_classes=V, end_token=END, max_length=4, hidden_size=8, attention_dim=6, embed_size=3) | kw
    return AttentionReader(SmallCNN(features=(4, 6), stride=4), **kw)


@pytest.fixture(scope="module")
def reader():
    """(model, variables with perturbed parameters, images (3, 16, 32, 1)); grid 4 x 8, n = 32, d = 8."""
    model = _reader()
    images = jnp.asarray(np.random.default_rng(2).standard_normal((3, 16, 32, 1)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images, jnp.zeros((3, 4), jnp.int32))
    variables = {**variables, "params": _perturbed(variables["params"], seed=3)}
    return model, variables, images


def test_teacher_forcing_under_scan_equals_a_python_loop_over_steps(reader):
    model, variables, images = reader
    tokens = jnp.array([[1, 2, END, 7], [0, END, 7, 7], [3, 3, 3, END]])  # 7: PAD, outside [0, V)
    logits, alpha = _jit_apply(model)(variables, images, tokens)
    assert logits.shape == (3, 4, V) and alpha.shape == (3, 4, 32)

    grid = _jit_apply(model, method="encode")(variables, images)
    assert grid.shape == (3, 4, 8, 6 + 2)
    features = np.asarray(grid).reshape(3, 32, 8)
    mean = features.mean(axis=1)
    p = variables["params"]
    c = jnp.asarray(mean @ np.asarray(p["init_c"]["kernel"]) + np.asarray(p["init_c"]["bias"]), jnp.float32)
    s = jnp.asarray(mean @ np.asarray(p["init_s"]["kernel"]) + np.asarray(p["init_s"]["bias"]), jnp.float32)
    previous = np.array(
        [[V, 1, 2, END], [V, 0, END, END], [V, 3, 3, 3]]
    )  # start, then the targets; PAD -> END
    call_step = _jit_apply(model, method=lambda module, *args: module.step(*args))
    for t in range(4):
        (c, s), (step_logits, step_alpha) = call_step(variables, (c, s), jnp.asarray(previous[:, t]),
                                                      jnp.asarray(features))  # fmt: skip
        np.testing.assert_allclose(logits[:, t], step_logits, rtol=1e-5, atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(alpha[:, t], step_alpha, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")


def test_the_feature_grid_is_the_backbone_with_row_and_column_coordinates(reader):
    model, variables, images = reader
    grid = np.asarray(_jit_apply(model, method="encode")(variables, images))
    backbone_variables = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
    backbone = model.backbone.apply(backbone_variables, images)
    np.testing.assert_allclose(grid[..., :6], backbone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid[0, :, 0, 6], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)  # rows
    np.testing.assert_allclose(grid[0, 0, :, 7], np.linspace(-1, 1, 8), atol=1e-6)  # columns


def test_beam_width_one_is_greedy_decoding(reader):
    model, variables, images = reader
    greedy = _jit_apply(model, method="decode")(variables, images)
    beam = _jit_apply(model, beam_width=1, method="beam_search")(variables, images)
    assert isinstance(greedy, Decoded) and greedy.tokens.shape == (3, 4) and greedy.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-5)
    np.testing.assert_allclose(beam.attention, greedy.attention, rtol=1e-5, atol=1e-7)
    # the greedy score is the sum of the chosen tokens' log-probabilities up to the first END, recomputed
    # by teacher forcing on the chosen tokens
    logits, alpha = _jit_apply(model)(variables, images, greedy.tokens)
    np.testing.assert_allclose(alpha, greedy.attention, rtol=1e-5, atol=1e-7)
    logp = np.asarray(jax.nn.log_softmax(logits))
    chosen = np.take_along_axis(logp, np.asarray(greedy.tokens)[..., None], -1)[..., 0]
    ended = np.cumsum(np.asarray(greedy.tokens) == END, axis=1)
    counted = np.concatenate([np.zeros((3, 1)), ended[:, :-1]], axis=1) == 0
    np.testing.assert_allclose(greedy.scores, (chosen * counted).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(logits, -1), greedy.tokens)  # greedy: the argmax at each step


# A Markov chain over the tokens 0, 1 and END = 2 from the start token 3: the logits depend on the previous
# token only. Greedy takes 0 (0.6) and then has nothing better than 0.34; 1 (0.4) then END (0.98) wins.
CHAIN = np.array([
    [0.34, 0.33, 0.33],  # after 0
    [0.01, 0.01, 0.98],  # after 1
    [1 / 3, 1 / 3, 1 / 3],  # after END (never used: a finished sequence only repeats END)
    [0.60, 0.40, 0.00],  # after start
])  # fmt: skip


def _chain_model(chain):
    model = AttentionReader(SmallCNN(features=(4,), stride=2), num_classes=3, end_token=2, max_length=3,
                            hidden_size=4, attention_dim=2, embed_size=4)  # fmt: skip
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images, jnp.zeros((2, 3), jnp.int32))
    params = jax.tree.map(np.array, variables["params"])
    params["step"]["embed"]["embedding"] = np.eye(4, dtype=np.float32)  # one-hot rows: token -> row of chain
    kernel = np.zeros_like(params["step"]["output"]["kernel"])
    kernel[-4:] = np.log(np.maximum(chain, 1e-30))  # only the previous token's embedding reaches the logits
    params["step"]["output"]["kernel"] = kernel
    params["step"]["output"]["bias"] = np.zeros_like(params["step"]["output"]["bias"])
    return model, {**variables, "params": params}, images


def _best_by_enumeration(chain, length):
    """The highest-scoring token sequence of a chain over all 3^length, END absorbing at no cost."""
    best = (-np.inf, None)
    for seq in np.ndindex(*(3,) * length):
        score, previous = 0.0, 3
        for token in seq:
            if previous == 2:
                if token != 2:
                    score = -np.inf
                continue
            score += np.log(chain[previous, token]) if chain[previous, token] else -np.inf
            previous = token
        best = max(best, (score, seq))
    return best


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
    model, variables, images = _chain_model(CHAIN)
    greedy = _jit_apply(model, method="decode")(variables, images)
    beam = _jit_apply(model, beam_width=2, method="beam_search")(variables, images)
    best_score, best_tokens = _best_by_enumeration(CHAIN, 3)
    assert best_tokens == (1, 2, 2)
    np.testing.assert_array_equal(beam.tokens, [best_tokens] * 2)
    np.testing.assert_allclose(beam.scores, [best_score] * 2, rtol=1e-5)  # log 0.4 + log 0.98
    np.testing.assert_array_equal(greedy.tokens, [[0, 0, 0]] * 2)
    np.testing.assert_allclose(greedy.scores, [np.log(0.6) + 2 * np.log(0.34)] * 2, rtol=1e-5)
    assert (greedy.scores < beam.scores - 0.5).all()
    wide = _jit_apply(model, beam_width=5, method="beam_search")(variables, images)  # more beams than tokens
    np.testing.assert_array_equal(wide.tokens, beam.tokens)


def test_scores_stop_at_the_first_end():
    chain = CHAIN.copy()
    chain[3] = [0.4, 0.6, 0.0]  # now greedy reads 1, END as well: its later steps add nothing
    model, variables, images = _chain_model(chain)
    for decoded in (
        _jit_apply(model, method="decode")(variables, images),
        _jit_apply(model, beam_width=3, method="beam_search")(variables, images),
    ):
        np.testing.assert_array_equal(decoded.tokens, [[1, 2, 2]] * 2)
        np.testing.assert_allclose(decoded.scores, [np.log(0.6) + np.log(0.98)] * 2, rtol=1e-5)


# END at once (0.51) beats 1, 0, END (0.49 x 0.97 x 0.99 = 0.47) on the summed log-probability; over
# GNMT's ((5 + L) / 6) ** alpha the three tokens win from alpha = 0.39 on:
# -0.754 / (8 / 6) ** 0.6 = -0.635 > -0.673 / 1, but -0.754 / (8 / 6) ** 0.3 = -0.692 < -0.673.
SHORT_OR_LONG = np.array([
    [0.005, 0.005, 0.99],  # after 0
    [0.97, 0.015, 0.015],  # after 1
    [1 / 3, 1 / 3, 1 / 3],  # after END
    [0.0, 0.49, 0.51],  # after start
])  # fmt: skip


def test_length_penalty_ranks_beams_by_score_over_length():
    model, variables, images = _chain_model(SHORT_OR_LONG)
    short, long = np.log(0.51), np.log(0.49) + np.log(0.97) + np.log(0.99)
    for penalty, tokens, score in [
        (0.0, [2, 2, 2], short),
        (0.3, [2, 2, 2], short),
        (0.6, [1, 0, 2], long),
        (1.0, [1, 0, 2], long),
    ]:
        beam = _jit_apply(model, beam_width=2, length_penalty=penalty, method="beam_search")(
            variables, images
        )
        np.testing.assert_array_equal(beam.tokens, [tokens] * 2, err_msg=f"alpha {penalty}")
        np.testing.assert_allclose(beam.scores, [score] * 2, rtol=1e-5)  # the sum, not the rank
    # the model's field is the default of beam_search and of a read without tokens
    normalised = model.clone(length_penalty=1.0, beam_width=2)
    read = _jit_apply(normalised)(variables, images)
    np.testing.assert_array_equal(read["beam"].tokens, [[1, 0, 2]] * 2)
    np.testing.assert_array_equal(read["greedy"].tokens, [[2, 2, 2]] * 2)


def test_beam_search_outputs_are_those_of_its_tokens(reader):
    """The best beam's attention and score are what teacher forcing on its tokens gives."""
    model, variables, images = reader
    beam = _jit_apply(model, beam_width=3, method="beam_search")(variables, images)
    logits, alpha = _jit_apply(model)(variables, images, beam.tokens)
    np.testing.assert_allclose(beam.attention, alpha, rtol=1e-5, atol=1e-6)
    logp = np.asarray(jax.nn.log_softmax(logits))
    chosen = np.take_along_axis(logp, np.asarray(beam.tokens)[..., None], -1)[..., 0]
    ended = np.cumsum(np.asarray(beam.tokens) == END, axis=1)
    counted = np.concatenate([np.zeros((3, 1)), ended[:, :-1]], axis=1) == 0
    np.testing.assert_allclose(beam.scores, (chosen * counted).sum(1), rtol=1e-5)
    greedy = _jit_apply(model, method="decode")(variables, images)
    assert (np.asarray(beam.scores) >= np.asarray(greedy.scores) - 1e-5).all()


@pytest.mark.parametrize("bf16_backbone", [False, True])
def test_bfloat16_compute_with_float32_parameters(reader, bf16_backbone, monkeypatch):
    model, variables, images = reader
    low = model.clone(dtype=jnp.bfloat16)  # the decoder in bf16: without the backbone, it alone differs
    if bf16_backbone:
        low = low.clone(backbone=model.backbone.clone(dtype=jnp.bfloat16))
    tokens = jnp.array([[1, 2, END, 7], [0, END, 7, 7], [3, 3, 3, END]])
    fresh = jax.eval_shape(low.init, jax.random.key(0), images, tokens)
    assert {x.dtype for x in jax.tree.leaves(fresh["params"])} == {jnp.dtype(jnp.float32)}
    logits, alpha = _jit_apply(low)(variables, images, tokens)
    ref_logits, ref_alpha = _jit_apply(model)(variables, images, tokens)
    assert logits.dtype == alpha.dtype == jnp.float32
    assert not np.array_equal(logits, ref_logits)  # computed in bf16 ...
    np.testing.assert_allclose(
        logits, ref_logits, atol=0.15 * float(jnp.abs(ref_logits).max())
    )  # ... closely
    np.testing.assert_allclose(alpha, ref_alpha, atol=0.05)
    decoded = _jit_apply(low, beam_width=2, method="beam_search")(variables, images)
    assert decoded.scores.dtype == decoded.attention.dtype == jnp.float32
    # the attention is given bf16 inputs too (additive_attention runs its softmax in float32)
    seen = []
    real = reader_module.additive_attention
    spy = lambda *args, **kw: (
        seen.append({x.dtype for x in (*args, *kw.values()) if hasattr(x, "dtype")})
        or (  # noqa: E731
            real(*args, **kw)
        )
    )
    monkeypatch.setattr(reader_module, "additive_attention", spy)
    jax.eval_shape(functools.partial(low.apply, method="decode"), variables, images)
    assert seen and all(dtypes == {jnp.dtype(jnp.bfloat16)} for dtypes in seen)


def test_gradients_reach_every_decoder_parameter(reader):
    model, variables, images = reader
    tokens = jnp.array([[1, 2, END, 7], [0, END, 7, 7], [3, 3, 3, END]])

    def loss(params):
        (logits, alpha), _ = model.apply({**variables, "params": params}, images, tokens, train=True,
                                         mutable=["batch_stats"])  # fmt: skip
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(alpha**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads["step"]):
        if "embed" not in jax.tree_util.keystr(path):
            assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 0}, "max_length must be an int >= 1; got 0"),
        ({"num_classes": 1, "end_token": 0}, "num_classes must be an int >= 2"),
        ({"end_token": 5}, r"end_token must be in \[0, num_classes=5\); got 5"),
        ({"hidden_size": 0}, "hidden_size must be an int >= 1; got 0"),
        ({"length_penalty": float("nan")}, "length_penalty must be a number >= 0; got nan"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        _reader(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("beam_search", {"beam_width": 0}, "beam_width must be an int >= 1; got 0"),
        ("beam_search", {"beam_width": 2.0}, r"beam_width must be an int >= 1; got 2\.0"),
        ("beam_search", {"beam_width": 2, "max_length": 0}, "max_length must be an int >= 1; got 0"),
        (
            "beam_search",
            {"beam_width": 2, "length_penalty": -0.5},
            "length_penalty must be a number >= 0; got -0.5",
        ),
        ("decode", {"max_length": -1}, "max_length must be an int >= 1; got -1"),
    ],
)
def test_bad_decoding_arguments(reader, method, kwargs, message):
    model, variables, images = reader
    with pytest.raises(ValueError, match=message) as err:
        model.apply(variables, images, method=method, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs(reader):
    model, variables, images = reader
    with pytest.raises(ValueError, match=r"images must have shape \(B, H, W, C\)"):
        model.apply(variables, images[0], method="decode")
    with pytest.raises(ValueError, match=r"tokens must have shape \(B=3, T\); got shape \(4,\)"):
        model.apply(variables, images, jnp.zeros(4, jnp.int32))


def test_decoding_length_is_an_argument(reader):
    model, variables, images = reader
    short = _jit_apply(model, max_length=2, method="decode")(variables, images)
    full = _jit_apply(model, method="decode")(variables, images)
    assert short.tokens.shape == (3, 2) and short.attention.shape == (3, 2, 32)
    np.testing.assert_array_equal(short.tokens, full.tokens[:, :2])
    after_end = np.cumsum(np.asarray(full.tokens) == END, axis=1) > 0
    assert (np.asarray(full.tokens)[after_end] == END).all()  # END repeats once reached
