"""Bad input raises ValueError naming the argument; implementation= dispatch (Pallas monkeypatched)."""

import sys
import types

import jax
import jax.numpy as jnp
import pytest

import attn_jax.kernels  # noqa: F401  the real kernel already imported, as in a full run: patches must still win
from attn_jax.functional import additive, additive_attention

Q, H = jnp.ones((2, 3, 5)), jnp.ones((2, 7, 4))
P = dict(w_q=jnp.ones((5, 8)), w_k=jnp.ones((4, 8)), w_a=jnp.ones((8,)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=jnp.ones((5,))), r"query must have shape \(\.\.\., m, d_q\)"),
        (dict(query=jnp.ones((2, 3, 6))), r"query has size 6 .* w_q has d_q = 5"),
        (dict(w_k=jnp.ones((5, 8))), r"w_k must have shape \(d_k, a\) = \(4, 8\)"),
        (dict(w_a=jnp.ones((7,))), r"w_a must have shape"),
        (dict(bias=jnp.ones((3,))), r"bias must have shape \(a,\)"),
        (dict(values=jnp.ones((2, 6, 4))), r"values has size 6 .* keys have n = 7"),
        (dict(keys=jnp.ones((3, 7, 4))), r"leading batch dims do not broadcast"),
        (dict(mask=jnp.ones((3, 6), bool)), r"mask of shape \(3, 6\) is not broadcastable .*\(2, 3, 7\)"),
        (dict(fully_masked="ignore"), r"fully_masked must be one of"),
        (dict(chunk_size=0), r"chunk_size must be a positive int"),
        (dict(chunk_size=2.5), r"chunk_size must be a positive int"),
        (dict(chunk_size=True), r"chunk_size must be a positive int"),
        (dict(implementation="cuda"), r"implementation must be one of \('xla', 'pallas', 'auto'\)"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(query=Q, keys=H, **P) | kwargs
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda: additive_attention(**args))()  # raised at trace time, before XLA


@pytest.fixture
def fake_pallas(monkeypatch):
    calls = []

    def pallas_additive_attention(query, keys, values, *, w_q, w_k, w_a, bias=None, mask=None,
                                  fully_masked="zero", return_weights=True, interpret=None):  # fmt: skip
        calls.append(dict(bias=bias, mask=mask, fully_masked=fully_masked, return_weights=return_weights))
        ctx, w = additive_attention(query, keys, values, w_q=w_q, w_k=w_k, w_a=w_a, bias=bias, mask=mask,
                                    fully_masked=fully_masked, return_weights=return_weights)  # fmt: skip
        return ctx + 1.0, w  # marked so the test can tell which path ran

    module = types.ModuleType("attn_jax.kernels.additive_pallas")
    module.pallas_additive_attention = pallas_additive_attention
    monkeypatch.setitem(sys.modules, "attn_jax.kernels.additive_pallas", module)
    return calls


def test_pallas_dispatch_passes_the_contract(fake_pallas):
    mask = jnp.ones((3, 7), bool)
    ctx, w = additive_attention(Q, H, **P, mask=mask, fully_masked="uniform", implementation="pallas")
    ref, _ = additive_attention(Q, H, **P, mask=mask, fully_masked="uniform")
    assert jnp.allclose(ctx, ref + 1.0)
    assert fake_pallas == [dict(bias=None, mask=mask, fully_masked="uniform", return_weights=True)]
    with pytest.raises(ValueError, match="w_a must have shape"):  # validated before dispatch
        additive_attention(Q, H, **(P | dict(w_a=jnp.ones((3,)))), implementation="pallas")
    assert len(fake_pallas) == 1


def test_auto_runs_xla_on_cpu(fake_pallas):
    """On a CPU "auto" is the XLA path (which kernel runs on cuda / tpu: tests/test_kernels_dispatch.py)."""
    ref, _ = additive_attention(Q, H, **P)
    ctx, _ = additive_attention(Q, H, **P, implementation="auto")
    assert jnp.allclose(ctx, ref) and not fake_pallas
    ctx, _ = additive_attention(Q, H, **P, implementation="pallas")  # "pallas" on CPU: interpreted kernel
    assert jnp.allclose(ctx, ref + 1.0) and len(fake_pallas) == 1


def test_pallas_missing_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "attn_jax.kernels.additive_pallas", None)  # import fails
    with pytest.raises(additive.PallasUnavailableError, match="implementation='pallas' needs") as info:
        additive_attention(Q, H, **P, implementation="pallas")
    assert isinstance(info.value, ImportError)
    ctx, _ = additive_attention(Q, H, **P, implementation="auto")  # falls back to XLA
    assert jnp.allclose(ctx, additive_attention(Q, H, **P)[0])
