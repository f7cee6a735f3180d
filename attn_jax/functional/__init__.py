"""Pure attention functions (no Flax): additive scores, masked softmax, context vectors."""

from attn_jax.functional.additive import additive_attention, additive_scores
from attn_jax.functional.context import attention_context
from attn_jax.functional.softmax import masked_softmax

__all__ = ["additive_attention", "additive_scores", "attention_context", "masked_softmax"]
