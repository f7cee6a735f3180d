"""Pure attention functions (no Flax): additive scores, masked softmax, context vectors,
chunked (memory-bounded) additive attention and the dot-product family."""

from attn_jax.functional.additive import PallasUnavailableError, additive_attention, additive_scores
from attn_jax.functional.context import attention_context
from attn_jax.functional.dot_product import dot_product_attention, dot_product_scores, general_scores
from attn_jax.functional.softmax import masked_softmax

__all__ = [
    "PallasUnavailableError",
    "additive_attention",
    "additive_scores",
    "attention_context",
    "dot_product_attention",
    "dot_product_scores",
    "general_scores",
    "masked_softmax",
]
