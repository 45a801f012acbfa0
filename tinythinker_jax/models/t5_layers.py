"""T5's layers as Flax linen modules: projections, embeddings, RMS norm, relative
position biases, attention, the MLP, and one encoder and one decoder layer.

Parameters and activation constraints carry t5x's logical axis names; the
numerics follow Hugging Face's PyTorch T5 (see `models.t5`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax.models.t5_config import _ACTIVATIONS, T5Config

Array = jax.Array

# A large finite negative number: fully masked rows stay finite (t5x's choice).
NEG_INF = -1e10


def relative_position_bucket(relative_position: Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """Maps `key_position - query_position` to T5's relative-attention buckets.

  Half the buckets are exact offsets, the rest grow logarithmically up to
  `max_distance`; bidirectional buckets split the range by sign. The arithmetic
  (float32 log, truncation toward zero) matches Hugging Face's T5.
  """
  relative_position = relative_position.astype(jnp.int32)
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  if_large = max_exact + (jnp.log(safe / max_exact) /
                          math.log(max_distance / max_exact) *
                          (num_buckets - max_exact)).astype(jnp.int32)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, if_large)


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _constrain(x: Array, axes: tuple[Optional[str], ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


class DenseGeneral(nn.Module):
  """A bias-free projection contracting the last `len(in_axes)` dimensions."""

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_contracting: int = 1
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.num_contracting:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    fan_in = int(np.prod(in_shape))

    def init(key, shape, dtype):
      # Initialise as a 2-D matrix so fan-in counts every contracted dimension.
      flat = self.kernel_init(key, (fan_in, int(np.prod(shape[len(in_shape):]))), dtype)
      return flat.reshape(shape)

    kernel = _param(self, "kernel", init, kernel_shape, self.kernel_axes, self.param_dtype)
    # One 2-D matmul, [tokens, fan_in] x [fan_in, fan_out]: its two backward
    # matmuls are plain 2-D ones too, which XLA's CPU backend runs without
    # transposing copies of the activations (a dot_general over several batch
    # and contracting dimensions got a relayout copy per layer).
    batch_shape = x.shape[:x.ndim - self.num_contracting]
    y = jnp.dot(x.reshape((-1, fan_in)).astype(self.dtype),
                kernel.reshape((fan_in, -1)).astype(self.dtype))
    return y.reshape(batch_shape + tuple(self.features))


class Embed(nn.Module):
  """Token embedding table; `attend` gives logits against the same table."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.num_embeddings, self.features), ("vocab", "embed"),
                            self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, query: Array) -> Array:
    return jnp.einsum("...d,vd->...v", query.astype(self.dtype),
                      self.embedding.astype(self.dtype))


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no centering, statistics in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.epsilon)
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   self.param_dtype)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class RelativePositionBiases(nn.Module):
  """Per-head learned biases indexed by relative-position bucket."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array, *,
               bidirectional: bool) -> Array:
    """Returns biases of shape `[1, heads, queries, keys]` in float32."""
    relative = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(relative, bidirectional=bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    table = _param(self, "rel_embedding",
                   nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"),
                   self.param_dtype)
    values = jnp.take(table.astype(jnp.float32), buckets, axis=1)
    return values[None]


class MultiHeadAttention(nn.Module):
  """Unscaled dot-product attention (T5 folds the scale into the init).

  In decode mode a self-attention layer keeps its keys and values in the
  `cache` collection and writes the new ones at `cache_index`; a cross-attention
  layer (`cross=True`) projects the encoder output once and reuses it.
  """

  config: T5Config
  cross: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array, *,
               deterministic: bool, decode: bool = False,
               cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    dense = functools.partial(DenseGeneral, features=(cfg.num_heads, cfg.head_dim),
                              kernel_axes=("embed", "heads", "kv"),
                              dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    depth_scaling = math.sqrt(cfg.head_dim)
    base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    query_init = lambda *a: base_init(*a) / depth_scaling  # noqa: E731
    query = dense(kernel_init=query_init, name="query")(inputs_q)
    query = _constrain(query, ("batch", "length", "heads", "kv"))

    def project_kv():
      k = dense(kernel_init=base_init, name="key")(inputs_kv)
      v = dense(kernel_init=base_init, name="value")(inputs_kv)
      return (_constrain(k, ("batch", "length", "heads", "kv")),
              _constrain(v, ("batch", "length", "heads", "kv")))

    # Decode-mode caches are laid out [batch, heads, length, kv], so each step's
    # attention is a batched matmul over leading (batch, heads) dims with no
    # per-step transpose of the cache (several times faster on CPU).
    heads_first = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731
    if decode and self.cross:
      if self.has_variable("cache", "cached_key"):
        key = self.get_variable("cache", "cached_key")
        value = self.get_variable("cache", "cached_value")
      else:
        key, value = map(heads_first, project_kv())
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
    elif decode:
      key, value = map(heads_first, project_kv())
      stepping = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                   value.dtype)
      if stepping:
        start = (0, 0, cache_index, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value,
                                                          start)
        key, value = cached_key.value, cached_value.value
    else:
      key, value = map(heads_first, project_kv())

    logits_dtype = jnp.float32 if cfg.float32_attention_logits else cfg.compute_dtype
    logits = jnp.einsum("bqhd,bhkd->bhqk", query.astype(logits_dtype),
                        key.astype(logits_dtype))
    logits = logits + bias.astype(logits_dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(cfg.compute_dtype)
    if not deterministic and cfg.dropout_rate > 0:
      weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, value.astype(cfg.compute_dtype))
    out = DenseGeneral(features=(inputs_q.shape[-1],), kernel_axes=("heads", "kv", "embed"),
                       num_contracting=2, kernel_init=base_init,
                       dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
                       name="out")(out)
    return _constrain(out, ("batch", "length", "embed"))


def _gate(activations: Sequence[str], *projections: Array) -> Array:
  """The product of each activation applied to its projection."""
  hidden = None
  for name, h in zip(activations, projections):
    h = _ACTIVATIONS[name](h)
    hidden = h if hidden is None else hidden * h
  return hidden


class MlpBlock(nn.Module):
  """T5's feed-forward block: one projection per activation, multiplied."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    cfg = self.config
    dense = functools.partial(DenseGeneral, dtype=cfg.compute_dtype,
                              param_dtype=cfg.parameter_dtype)
    projections = []
    for i in range(len(cfg.mlp_activations)):
      layer_name = "wi" if len(cfg.mlp_activations) == 1 else f"wi_{i}"
      projections.append(dense(features=(cfg.mlp_dim,), kernel_axes=("embed", "mlp"),
                               name=layer_name)(x))
    # Under differentiation only the projections are kept for the backward
    # pass; the activations and their product are recomputed from them there
    # (elementwise, fused into the backward's own passes). Otherwise the
    # gated GELU's intermediates (tanh, cubes, products) are all kept.
    hidden = jax.checkpoint(functools.partial(_gate, cfg.mlp_activations))(*projections)
    hidden = _constrain(hidden, ("batch", "length", "mlp"))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    out = dense(features=(x.shape[-1],), kernel_axes=("mlp", "embed"), name="wo")(hidden)
    return _constrain(out, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    norm = functools.partial(RMSNorm, epsilon=cfg.layer_norm_epsilon,
                             dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    dropout = nn.Dropout(cfg.dropout_rate)
    h = norm(name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg, name="attention")(h, h, bias, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    h = norm(name="pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg, name="mlp")(h, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return _layer_output(cfg, _constrain(x, ("batch", "length", "embed")))


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               deterministic: bool, decode: bool,
               cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    norm = functools.partial(RMSNorm, epsilon=cfg.layer_norm_epsilon,
                             dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    dropout = nn.Dropout(cfg.dropout_rate)
    h = norm(name="pre_self_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg, name="self_attention")(
        h, h, self_bias, deterministic=deterministic, decode=decode,
        cache_index=cache_index)
    x = x + dropout(h, deterministic=deterministic)
    h = norm(name="pre_cross_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg, cross=True, name="encoder_decoder_attention")(
        h, encoded, cross_bias, deterministic=deterministic, decode=decode)
    x = x + dropout(h, deterministic=deterministic)
    h = norm(name="pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg, name="mlp")(h, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return _layer_output(cfg, _constrain(x, ("batch", "length", "embed")))


def _layer_output(cfg: T5Config, x: Array):
  """A layer's output; under `nn.scan` it is the carry, with no per-layer output."""
  return (x, None) if cfg.scan_layers else x
