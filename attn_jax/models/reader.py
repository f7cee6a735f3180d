"""AttentionReader: a backbone's feature grid read out loud by an LSTM that attends anew at every step.

Show, Attend and Tell (Xu et al. 2015) with Bahdanau's formula as it was meant: the query is the
decoder's own state, changing at every output step. For a feature grid H = (h_1, ..., h_n) and the
LSTM state (c, s) before step t:

    e_i = w_a . tanh(W_q s + b + W_k h_i),  alpha = softmax(e),  z = sum_i alpha_i h_i
                                                        (`attn_jax.additive_attention`, one query)
    beta = sigmoid(w_beta . s + b_beta)                 (the gate on the context, a scalar per example)
    (c, s) = LSTM((c, s), [E y_{t-1}, beta z])
    logits_t = W_o [s, beta z, E y_{t-1}] + b_o         (the prediction from state, context, previous token)

Training runs the steps under `nn.scan` with teacher forcing; greedy decoding and beam search run the same
step under `nn.scan` for a fixed number of steps with a done mask, so all three compile once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.functional import additive_attention
from attn_jax.models._attend import check_images

Dtype = Any


class Decoded(NamedTuple):
    """What `AttentionReader.decode` and `AttentionReader.beam_search` return."""

    tokens: jax.Array
    """The chosen tokens, int32 (B, T); every step after the first END holds END again."""
    scores: jax.Array
    """The sum of the chosen tokens' log-probabilities up to and including the first END, float32 (B,)."""
    attention: jax.Array
    """Alpha of each step over the n positions of the feature grid (row-major), float32 (B, T, n)."""


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_max_length(max_length) -> None:
    """Raise ValueError unless max_length is an int >= 1."""
    if not _positive_int(max_length):
        raise ValueError(f"max_length must be an int >= 1; got {max_length!r}")


def check_beam_width(beam_width) -> None:
    """Raise ValueError unless beam_width is an int >= 1."""
    if not _positive_int(beam_width):
        raise ValueError(f"beam_width must be an int >= 1; got {beam_width!r}")


def check_length_penalty(length_penalty) -> None:
    """Raise ValueError unless length_penalty is a real number >= 0."""
    ok = isinstance(length_penalty, (int, float)) and not isinstance(length_penalty, bool)
    if not ok or not length_penalty >= 0:  # `not >=` also refuses NaN
        raise ValueError(f"length_penalty must be a number >= 0; got {length_penalty!r}")


def with_coordinates(features: jax.Array) -> jax.Array:
    """(B, h, w, C) features -> (B, h * w, C + 2): each position's row and column in [-1, 1] appended."""
    b, h, w, _ = features.shape
    ys = jnp.linspace(-1.0, 1.0, h) if h > 1 else jnp.zeros(1)
    xs = jnp.linspace(-1.0, 1.0, w) if w > 1 else jnp.zeros(1)
    grid = jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1).astype(features.dtype)
    grid = jnp.broadcast_to(grid, (b, h, w, 2))
    return jnp.concatenate([features, grid], axis=-1).reshape(b, h * w, -1)


class ReaderStep(nn.Module):
    """One decoder step of `AttentionReader` (its child "step"): attend with the state, gate, LSTM, predict.

    The LSTM is Flax's ``OptimizedLSTMCell`` (the gates i, f, g, o of ``LSTMCell``, the same parameters
    ``ii`` ... ``ho``) fed the previous token's embedding and the gated context (see the module docstring).

    Args:
      num_classes: V, the output tokens; the embedding has a row more, index V, the start token.
      hidden_size: the LSTM's width.
      attention_dim: a, the width of W_q, W_k and w_a.
      embed_size: the width of the token embedding E.
      implementation: passed to `attn_jax.additive_attention`: ``"xla"``, ``"pallas"`` or ``"auto"`` (the
        fused kernel on GPU / TPU, XLA elsewhere).
      dtype: computation dtype (None: the inputs' and parameters' promoted dtype).
      param_dtype: dtype of the parameters.

    Returns:
      Called as ``step((c, s), previous_tokens, features)`` with the LSTM carry (B, hidden_size) each,
      int previous tokens (B,) and features (B, n, d): the new carry and (logits float32 (B, V), alpha
      float32 (B, n)).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> step = ReaderStep(num_classes=11, hidden_size=8, attention_dim=4, embed_size=3)
      >>> carry, features = (jnp.zeros((2, 8)), jnp.zeros((2, 8))), jnp.ones((2, 6, 5))
      >>> variables = step.init(jax.random.key(0), carry, jnp.array([11, 11]), features)
      >>> (c, s), (logits, alpha) = step.apply(variables, carry, jnp.array([11, 11]), features)
      >>> s.shape, logits.shape, alpha.shape, alpha.sum(-1).tolist()
      ((2, 8), (2, 11), (2, 6), [1.0, 1.0])
    """

    num_classes: int
    hidden_size: int
    attention_dim: int
    embed_size: int
    implementation: str = "xla"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, previous_tokens, features):
        c, s = carry
        d, a = features.shape[-1], self.attention_dim
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        embedded = nn.Embed(
            self.num_classes + 1,
            self.embed_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed",
        )(previous_tokens)
        w_q = self.param("w_q", nn.initializers.lecun_normal(), (self.hidden_size, a), self.param_dtype)
        w_k = self.param("w_k", nn.initializers.lecun_normal(), (d, a), self.param_dtype)
        w_a = self.param("w_a", nn.initializers.normal(stddev=a**-0.5), (a,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (a,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(features.dtype, s.dtype, self.param_dtype)
        cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
        context, alpha = additive_attention(
            cast(s)[:, None, :],
            cast(features),
            w_q=cast(w_q),
            w_k=cast(w_k),
            w_a=cast(w_a),
            bias=cast(bias),
            implementation=self.implementation,
        )  # (B, 1, d), (B, 1, n)
        beta = nn.sigmoid(dense(1, "beta")(s))
        gated = (beta * context[:, 0]).astype(dtype)
        lstm = nn.OptimizedLSTMCell(
            self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="lstm"
        )
        (c_new, s_new), _ = lstm((c, s), jnp.concatenate([embedded.astype(dtype), gated], axis=-1))
        prediction_inputs = jnp.concatenate([s_new.astype(dtype), gated, embedded.astype(dtype)], axis=-1)
        logits = dense(self.num_classes, "output")(prediction_inputs)
        new_carry = (c_new.astype(c.dtype), s_new.astype(s.dtype))
        return new_carry, (logits.astype(jnp.float32), alpha[:, 0].astype(jnp.float32))


def _teacher_forced(step, carry, previous_tokens, features):
    """nn.scan of the step over time (axis 1 of previous_tokens), the features broadcast."""
    scan = nn.scan(
        lambda module, carry, tokens, features: module(carry, tokens, features),
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(1, nn.broadcast),
        out_axes=1,
    )
    return scan(step, carry, previous_tokens, features)


def _scan_steps(body, module, carry, length: int, features):
    """nn.scan of `body(module, carry, t, features)` over t = 0 .. length - 1 (outputs stacked on axis 1)."""
    scan = nn.scan(
        body,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(0, nn.broadcast),
        out_axes=1,
    )
    return scan(module, carry, jnp.arange(length), features)


class AttentionReader(nn.Module):
    """Reader: backbone -> feature grid -> an LSTM whose state queries additive attention at every step.

    The backbone's (B, h, w, C) features, with each position's row and column in [-1, 1] appended
    (``coordinates``, so that the context tells the decoder where it looked), are the n = h * w keys and
    values h_i (d = C + 2 each, row-major). The LSTM state starts as linear maps of their mean; each
    step is `ReaderStep` (see the module docstring for the formula). Tokens: ``num_classes`` output
    classes (cluttered_digits reading: the digits 0-9 and END = 10, so 11), of which ``end_token`` ends a
    sequence; the start token is the embedding's extra row (index ``num_classes``), never predicted.

    Args:
      backbone: a backbone module of `attn_jax.nn` (called ``backbone(images, train=...)``).
      num_classes: V, the output tokens, END included (>= 2).
      end_token: the token that ends a sequence, in [0, num_classes).
      max_length: T, the decoding steps of `decode` and `beam_search` (>= 1); cluttered_digits
        reading: L + 1 (the digits and END).
      hidden_size: the LSTM's width.
      attention_dim: a, the width of the attention projections.
      embed_size: the width of the token embedding.
      coordinates: append each position's (row, column) to its features.
      beam_width: the beams of the beam search run by a call without tokens (`read`); 1: greedy only.
      length_penalty: alpha of the beam search's length normalisation (`beam_search`); 0: none.
      implementation: additive attention's implementation (`ReaderStep`): ``"xla"``, ``"pallas"`` or
        ``"auto"``.
      dtype: computation dtype of the decoder (None: the inputs'); ``jnp.bfloat16`` for bf16 compute.
        The backbone has its own. Logits and attention weights are returned in float32; softmax and
        reductions of the attention run in float32.
      param_dtype: dtype of the decoder's parameters.

    Returns:
      Called as ``model.apply(variables, images, tokens, train=False)`` on images (B, H, W, C_in) and the
      target tokens (B, T) (teacher forcing: step t sees token t - 1, step 0 the start token; tokens
      outside [0, num_classes), e.g. PAD, enter as END: they only follow the end): float32 logits
      (B, T, num_classes) and the attention weights alpha, float32 (B, T, n). ``train=True`` uses and
      updates BatchNorm batch statistics (``mutable=["batch_stats"]``). Called without tokens, it reads
      (`read`): a dict of `Decoded`, ``"greedy"`` and, with ``beam_width`` > 1, ``"beam"``; a plain
      ``model.init(key, images)`` initialises every parameter that way. ``method="decode"`` and
      ``method="beam_search"`` decode; ``method="encode"`` gives the feature grid.

    Raises:
      ValueError: a bad argument at construction (``num_classes`` < 2, ``end_token`` outside [0,
        num_classes), a width or ``max_length`` < 1); images that are not 4-D, tokens that are not
        (B, T), or a bad ``max_length`` / ``beam_width`` when called.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from attn_jax.models import AttentionReader
      >>> from attn_jax.nn import SmallCNN
      >>> model = AttentionReader(SmallCNN(features=(8, 16), stride=4), num_classes=11, end_token=10,
      ...                         max_length=5, hidden_size=32, attention_dim=16, embed_size=8)
      >>> images, tokens = jnp.zeros((2, 32, 64, 1)), jnp.array([[3, 0, 7, 10, 11], [5, 10, 11, 11, 11]])
      >>> variables = model.init(jax.random.key(0), images, tokens)
      >>> logits, alpha = model.apply(variables, images, tokens)
      >>> logits.shape, alpha.shape  # n = (32 / 4) * (64 / 4)
      ((2, 5, 11), (2, 5, 128))
      >>> greedy = model.apply(variables, images, method="decode")
      >>> beam = model.apply(variables, images, beam_width=3, method="beam_search")
      >>> greedy.tokens.shape, beam.scores.shape, beam.attention.shape
      ((2, 5), (2,), (2, 5, 128))
    """

    backbone: nn.Module
    num_classes: int = 11
    end_token: int = 10
    max_length: int = 5
    hidden_size: int = 256
    attention_dim: int = 128
    embed_size: int = 64
    coordinates: bool = True
    beam_width: int = 1
    length_penalty: float = 0.0
    implementation: str = "xla"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if not _positive_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 (the tokens, END included); got {self.num_classes!r}"
            )
        if not (isinstance(self.end_token, int) and 0 <= self.end_token < self.num_classes):
            raise ValueError(
                f"end_token must be in [0, num_classes={self.num_classes}); got {self.end_token!r}"
            )
        check_max_length(self.max_length)
        check_beam_width(self.beam_width)
        check_length_penalty(self.length_penalty)
        for name in ("hidden_size", "attention_dim", "embed_size"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int >= 1; got {getattr(self, name)!r}")
        super().__post_init__()

    def setup(self):
        """The decoder's layers: ``init_c`` and ``init_s`` (the first LSTM state from the mean feature) and
        ``step`` (`ReaderStep`); the backbone is the field."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.init_c = nn.Dense(self.hidden_size, **kw)
        self.init_s = nn.Dense(self.hidden_size, **kw)
        self.step = ReaderStep(
            self.num_classes, self.hidden_size, self.attention_dim, self.embed_size, self.implementation, **kw
        )

    @property
    def start_token(self) -> int:
        """The start token, ``num_classes``: the embedding's extra row, fed to the first step."""
        return self.num_classes

    def encode(self, images, train: bool = False):
        """The feature grid (B, h, w, d) the decoder attends over (d = C + 2 with ``coordinates``)."""
        check_images("AttentionReader", images)
        features = self.backbone(images, train=train)
        dtype = self.dtype or jnp.result_type(features.dtype, self.param_dtype)
        features = features.astype(dtype)
        b, h, w, _ = features.shape
        if self.coordinates:
            return with_coordinates(features).reshape(b, h, w, -1)
        return features

    def _start(self, images, train: bool):
        """(features (B, n, d), the initial LSTM carry)."""
        grid = self.encode(images, train=train)
        b, h, w, d = grid.shape
        features = grid.reshape(b, h * w, d)
        mean = jnp.mean(features, axis=1)
        return features, (self.init_c(mean), self.init_s(mean))

    def __call__(self, images, tokens=None, train: bool = False):
        if tokens is None:  # no targets: read the images (what evaluation and a plain init call)
            return self.read(images)
        features, carry = self._start(images, train)
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != features.shape[0]:
            raise ValueError(f"tokens must have shape (B={features.shape[0]}, T); got shape {tokens.shape}")
        tokens = tokens.astype(jnp.int32)
        tokens = jnp.where((tokens >= 0) & (tokens < self.num_classes), tokens, self.end_token)
        start = jnp.full((tokens.shape[0], 1), self.start_token, jnp.int32)
        previous = jnp.concatenate([start, tokens[:, :-1]], axis=1)
        _, (logits, alpha) = _teacher_forced(self.step, carry, previous, features)
        return logits, alpha

    def read(self, images) -> dict[str, Decoded]:
        """Read images without targets: ``{"greedy": decode(images)}``, plus ``"beam"``:
        ``beam_search(images, beam_width)`` when the model's ``beam_width`` is > 1."""
        out = {"greedy": self.decode(images)}
        if self.beam_width > 1:
            out["beam"] = self.beam_search(images, self.beam_width)
        return out

    def decode(self, images, max_length: int | None = None) -> Decoded:
        """Greedy decoding: at each step the most likely token, fed back; T = ``max_length`` steps.

        Args:
          images: (B, H, W, C_in).
          max_length: the number of steps T (None: the model's ``max_length``).

        Returns:
          `Decoded`: tokens int32 (B, T) (END after the first END), scores float32 (B,) (summed
          log-probabilities up to the first END) and attention float32 (B, T, n).

        Raises:
          ValueError: ``max_length`` < 1, or images that are not 4-D.
        """
        length = self.max_length if max_length is None else max_length
        check_max_length(length)
        features, carry = self._start(images, train=False)
        b = features.shape[0]
        end = self.end_token

        def body(module, state, t, features):
            lstm, previous, done, score = state
            lstm, (logits, alpha) = module(lstm, previous, features)
            token = jnp.where(done, end, jnp.argmax(logits, axis=-1).astype(jnp.int32))
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
            score = score + jnp.where(done, 0.0, logp)
            return (lstm, token, done | (token == end), score), (token, alpha)

        state = (carry, jnp.full((b,), self.start_token, jnp.int32), jnp.zeros((b,), bool), jnp.zeros((b,)))
        (_, _, _, scores), (tokens, alpha) = _scan_steps(body, self.step, state, length, features)
        return Decoded(tokens, scores, alpha)

    def beam_search(
        self,
        images,
        beam_width: int,
        max_length: int | None = None,
        length_penalty: float | None = None,
    ) -> Decoded:
        """Beam search: keep the ``beam_width`` best partial sequences.

        Sequences are ranked by their summed log-probability S over their length L (tokens up to and
        including END) as GNMT does (Wu et al. 2016): S / lp(L), lp(L) = ((5 + L) / 6) ** alpha. With
        alpha = 0 that is S itself; a larger alpha favours longer sequences (a summed log-probability
        only falls as tokens are added). A finished beam (one that produced END) can only continue with
        END at no cost, so it competes with the open ones on its final rank. All T = ``max_length``
        steps always run (compiled once); the best-ranked beam is returned.

        Args:
          images: (B, H, W, C_in).
          beam_width: K, the beams kept per image (>= 1; 1 is greedy decoding).
          max_length: the number of steps T (None: the model's ``max_length``).
          length_penalty: alpha >= 0 (None: the model's ``length_penalty``).

        Returns:
          `Decoded` of the best beam: tokens int32 (B, T), scores float32 (B,), attention float32
          (B, T, n).

        Raises:
          ValueError: ``beam_width`` < 1, ``max_length`` < 1, ``length_penalty`` < 0, or images that
            are not 4-D.
        """
        check_beam_width(beam_width)
        length = self.max_length if max_length is None else max_length
        check_max_length(length)
        penalty = self.length_penalty if length_penalty is None else length_penalty
        check_length_penalty(penalty)
        features, (c, s) = self._start(images, train=False)
        b, n, d = features.shape
        k, v, end = beam_width, self.num_classes, self.end_token
        tile = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  (B, ...) -> (B * K, ...), beams of one image together
        end_only = jnp.full((v,), -jnp.inf).at[end].set(0.0)

        def body(module, state, t, features):
            lstm, previous, done, scores, lengths, history, maps = state
            lstm, (logits, alpha) = module(lstm, previous.reshape(b * k), features)
            logp = jax.nn.log_softmax(logits).reshape(b, k, v)
            logp = jnp.where(done[..., None], end_only, logp)
            total = scores[..., None] + logp  # (B, K, V)
            grown = jnp.where(done, lengths, t + 1)  # (B, K): a candidate's length, END included
            rank = total / (((5.0 + grown) / 6.0) ** penalty)[..., None]
            _, best = jax.lax.top_k(rank.reshape(b, k * v), k)  # (B, K), sorted: beam 0 is the best
            scores = jnp.take_along_axis(total.reshape(b, k * v), best, axis=1)
            beam, token = best // v, (best % v).astype(jnp.int32)
            pick = lambda x: jnp.take_along_axis(x, beam.reshape(b, k, *([1] * (x.ndim - 2))), axis=1)  # noqa: E731
            lstm = jax.tree.map(lambda x: pick(x.reshape(b, k, -1)).reshape(b * k, -1), lstm)
            history = pick(history).at[:, :, t].set(token)
            maps = pick(maps).at[:, :, t].set(pick(alpha.reshape(b, k, n)))
            lengths = pick(grown)
            done = pick(done) | (token == end)
            return (lstm, token, done, scores, lengths, history, maps), None

        scores = jnp.full((b, k), -jnp.inf).at[:, 0].set(0.0)  # one live beam at first: no duplicates
        state = (
            (tile(c), tile(s)),
            jnp.full((b, k), self.start_token, jnp.int32),
            jnp.zeros((b, k), bool),
            scores,
            jnp.zeros((b, k), jnp.int32),
            jnp.zeros((b, k, length), jnp.int32),
            jnp.zeros((b, k, length, n), jnp.float32),
        )
        state, _ = _scan_steps(body, self.step, state, length, tile(features))
        _, _, _, scores, _, history, maps = state
        return Decoded(history[:, 0], scores[:, 0], maps[:, 0])
