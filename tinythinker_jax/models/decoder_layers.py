"""Decoder layers both decoder-only families share (`models.llama`, `models.gpt2`):
boxed parameters, causal masks within segments and over real tokens, positions,
the heads-first key/value layout, the decode cache and grouped-query attention.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e10


def param(module: nn.Module, name: str, init, shape, axes, dtype):
  """A parameter boxed with its logical axes."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def causal_mask(length: int, segment_ids: Optional[Array] = None,
                attention_mask: Optional[Array] = None) -> Array:
  """[batch or 1, length, length]: causal, within segments (packing), and over
  real tokens only (`attention_mask`, 1 = a real token)."""
  mask = jnp.tril(jnp.ones((length, length), bool))[None]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  if attention_mask is not None:
    mask = mask & attention_mask.astype(bool)[:, None, :]
  return mask


def positions_and_mask(tokens: Array, positions: Optional[Array],
                       segment_ids: Optional[Array], attention_mask: Optional[Array],
                       mask: Optional[Array]) -> tuple[Array, Array]:
  """A decoder module's positions (default 0..L-1) and attention mask (default
  `causal_mask` of the segment ids and padding), as both families take them."""
  length = tokens.shape[1]
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  if mask is None:
    mask = causal_mask(length, segment_ids, attention_mask)
  return positions, mask


def heads_first(x: Array) -> Array:
  """[batch, length, heads, depth] -> [batch, heads, length, depth]: the layout of
  the keys and values `attend` and the decode cache take, so a decode step's
  attention reads the cache as stored (no per-step transpose of the cache)."""
  return jnp.swapaxes(x, 1, 2)


def cached(module: nn.Module, k: Array, v: Array) -> tuple[Array, Array]:
  """Keys and values [batch, heads, length, depth] through a decode cache in
  `module`'s 'cache' collection: the first (initialising) call sizes it; later
  calls write at its running index along the length axis and return the whole
  cache."""
  initialising = not module.has_variable("cache", "key")
  cached_key = module.variable("cache", "key", jnp.zeros, k.shape, k.dtype)
  cached_value = module.variable("cache", "value", jnp.zeros, v.shape, v.dtype)
  index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
  if initialising:
    return k, v
  at = (0, 0, index.value, 0)
  cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, at)
  cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, at)
  index.value = index.value + k.shape[2]
  return cached_key.value, cached_value.value


def attend(q: Array, k: Array, v: Array, mask: Array, dtype,
           dropout: Optional[Callable[[Array], Array]] = None) -> Array:
  """Softmax attention of queries [b, q, h, d] over keys and values [b, kvh, k, d]
  (`heads_first`) with h a multiple of kvh (grouped-query attention: query head i reads key head
  i // (h // kvh)), scaled by 1/sqrt(d), the scores in float32, `mask` [b or 1, q,
  k]; `dropout` (training) on the attention weights. The query heads are grouped
  by their key head, so keys and values are never repeated per query head (a
  decode step would otherwise copy the whole cache h // kvh times)."""
  b, length, heads, depth = q.shape
  kv_heads = k.shape[1]
  q = q.reshape(b, length, kv_heads, heads // kv_heads, depth)
  scores = jnp.einsum("bqhgd,bhkd->bhgqk", q, k).astype(jnp.float32) / jnp.sqrt(
      jnp.float32(depth))
  scores = jnp.where(mask[:, None, None], scores, NEG_INF)
  weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("bhgqk,bhkd->bqhgd", weights, v).reshape(b, length, heads, depth)


def weight_dropout(rate: float, deterministic: bool):
  """The attention-weight dropout `attend` takes (None when it does nothing)."""
  if not rate or deterministic:
    return None
  return lambda weights: nn.Dropout(rate)(weights, deterministic=False)
