"""T5 encoder-decoder (v1.0, v1.1, Flan-T5) as Flax linen modules.

The module tree and parameter names follow t5x's `examples/t5/network.py`
(`token_embedder`, `encoder/layers_0/attention/query`, `relpos_bias`, ...), so
t5x checkpoints map onto it by name, and every parameter and activation
constraint carries t5x's logical axis names (`vocab, embed, mlp, heads, kv,
batch, length, relpos_buckets`). The numerics follow Hugging Face's PyTorch T5
(relative-position bucketing, RMS norm, logit rescaling for tied embeddings) so
that imported checkpoints give the same logits.

Nothing here knows about meshes, gin or data: the partitioning rules that turn
logical axis names into mesh axes live in `tinythinker_jax.partitioning`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax import errors, platforms

Array = jax.Array

# A large finite negative number: fully masked rows stay finite (t5x's choice).
NEG_INF = -1e10

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    # t5x's 'gelu' and Hugging Face's 'gelu_new' are the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_REMAT_POLICIES = ("none", "full", "minimal")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 model; field names are t5x's `T5Config` names.

  `dtype` is the compute dtype ('auto': by platform, see `compute_dtype`);
  parameters are stored in `param_dtype`.
  `mlp_activations=('relu',)` with `logits_via_embedding=True` is T5 v1.0;
  `('gelu', 'linear')` with untied logits is T5 v1.1 and Flan-T5.
  """

  vocab_size: int = 32128
  dtype: str = "auto"
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ("relu",)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  float32_attention_logits: bool = True
  param_dtype: str = "float32"
  remat_policy: str = "none"
  # Run each layer stack as one `nn.scan` over stacked parameters (leading
  # `layers` axis) instead of unrolling it: compile time stops growing with
  # depth. `scan_params` / `unscan_params` convert between the two layouts.
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in self.mlp_activations:
      if name not in _ACTIVATIONS:
        raise errors.UserError(
            f"T5Config.mlp_activations: unknown activation {name!r}; "
            f"known: {sorted(_ACTIVATIONS)}")
    for field, allowed in (("dtype", sorted(_DTYPES) + [platforms.AUTO]),
                           ("param_dtype", sorted(_DTYPES))):
      if getattr(self, field) not in allowed:
        raise errors.UserError(f"T5Config.{field}={getattr(self, field)!r}; "
                               f"expected one of {allowed}")
    if self.remat_policy not in _REMAT_POLICIES:
      raise errors.UserError(f"T5Config.remat_policy={self.remat_policy!r}; "
                       f"expected one of {_REMAT_POLICIES}")
    for field in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                  "num_encoder_layers", "num_decoder_layers"):
      if getattr(self, field) <= 0:
        raise errors.UserError(f"T5Config.{field} must be positive, "
                         f"got {getattr(self, field)}")

  @property
  def compute_dtype(self):
    """The activations' dtype; 'auto' is bfloat16 on TPUs and GPUs, float32 on
    CPUs (`platforms.activation_dtype`), resolved where the model runs."""
    return _DTYPES[platforms.activation_dtype(self.dtype)]

  @property
  def parameter_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


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


def _remat(layer_cls, policy: str, static_argnums: tuple[int, ...], scanned: bool):
  if policy == "none":
    return layer_cls
  saveable = (None if policy == "full" else
              jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
  # Inside a scan XLA cannot hoist the recomputation out of the loop body, so
  # the CSE barrier is not needed there (t5x makes the same choice).
  return nn.remat(layer_cls, policy=saveable, static_argnums=static_argnums,
                  prevent_cse=not scanned)


def _layer_stack(layer_cls, cfg: T5Config, num_layers: int,
                 static_argnums: tuple[int, ...], *args) -> Array:
  """Runs `num_layers` layers on `args[0]`; the other args go to every layer.

  Called from a compact method: the layers become that module's submodules.

  Unscanned, layer i is the submodule `layers_{i}` (t5x's names). Scanned, one
  submodule `layers` runs under `nn.scan`: its parameters (and, in decode
  mode, its cache) are stacked on a leading axis, logically named `layers`.
  """
  layer = _remat(layer_cls, cfg.remat_policy, static_argnums, cfg.scan_layers)
  x, rest = args[0], args[1:]
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer(cfg, name=f"layers_{i}")(x, *rest)
    return x
  stack = nn.scan(layer, variable_axes={"params": 0, "cache": 0},
                  split_rngs={"params": True, "dropout": True},
                  in_axes=(nn.broadcast,) * len(rest), length=num_layers,
                  metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = stack(cfg, name="layers")(x, *rest)
  return x


def _mask_bias(mask: Array) -> Array:
  return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def _key_mask(query_segments: Array, key_segments: Array) -> Array:
  """`[batch, 1, q, k]` mask: keys that are not padding and share the segment.

  Segment id 0 marks padding; an unpacked batch has segment ids `tokens > 0`.
  """
  same = query_segments[:, :, None] == key_segments[:, None, :]
  return (same | (query_segments[:, :, None] == 0)) & (key_segments[:, None, :] > 0)


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, segment_ids: Optional[Array], *,
               deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[1]
    segments = (tokens > 0).astype(jnp.int32) if segment_ids is None else segment_ids
    positions = jnp.arange(length)
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  name="relpos_bias")(positions, positions,
                                                      bidirectional=True)
    bias = bias + _mask_bias(_key_mask(segments, segments)[:, None])
    x = self.shared_embedding(tokens)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = _constrain(x, ("batch", "length", "embed"))
    x = _layer_stack(EncoderLayer, cfg, cfg.num_encoder_layers, (3,), x, bias,
                     deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, cfg.parameter_dtype,
                name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack with relative positions and, in decode mode, a KV cache.

  Decode mode has two phases, as in t5x: a first call with a full-length
  dummy input (under `mutable=['cache']`) creates the cache, storing the
  cross-attention keys and values of `encoded`; later calls feed a few new
  tokens (usually one), which are written at the cache's `position`.
  """

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, encoder_segments: Array, tokens: Array,
               segment_ids: Optional[Array], *, deterministic: bool,
               decode: bool) -> Array:
    cfg = self.config
    batch, length = tokens.shape
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    name="relpos_bias")
    cache_index = None
    if decode and self.has_variable("cache", "position"):
      position = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
      key_positions = self.get_variable("cache", "key_positions")
      cache_index = position.value
      query_positions = cache_index + jnp.arange(length)
      causal = key_positions[None, :] <= query_positions[:, None]
      self_bias = relpos(query_positions, key_positions, bidirectional=False)
      self_bias = self_bias + _mask_bias(causal)[None, None]
      position.value = cache_index + length
      query_segments = jnp.ones((batch, length), jnp.int32)
    else:
      if decode:
        self.variable("cache", "position", jnp.zeros, (), jnp.int32)
        self.variable("cache", "key_positions", jnp.arange, length, dtype=jnp.int32)
      positions = jnp.arange(length)
      causal = positions[None, :] <= positions[:, None]
      self_bias = relpos(positions, positions, bidirectional=False)
      if segment_ids is None:
        mask = causal[None, None]
      else:
        mask = causal[None, None] & _key_mask(segment_ids, segment_ids)[:, None]
      self_bias = self_bias + _mask_bias(mask)
      query_segments = (jnp.ones((batch, length), jnp.int32)
                        if segment_ids is None else segment_ids)
    cross_bias = _mask_bias(_key_mask(query_segments, encoder_segments)[:, None])

    x = self.shared_embedding(tokens)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = _constrain(x, ("batch", "length", "embed"))
    x = _layer_stack(DecoderLayer, cfg, cfg.num_decoder_layers, (5, 6), x, encoded,
                     self_bias, cross_bias, deterministic, decode, cache_index)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, cfg.parameter_dtype,
                name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # T5 v1.0 ties the output projection to the embedding and rescales.
      logits = self.shared_embedding.attend(x * (cfg.emb_dim ** -0.5))
    else:
      logits = DenseGeneral(features=(cfg.vocab_size,), kernel_axes=("embed", "vocab"),
                            dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
                            name="logits_dense")(x)
    logits = _constrain(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)


class T5(nn.Module):
  """The T5 encoder-decoder.

  `apply({'params': p}, encoder_input_tokens, decoder_input_tokens)` returns
  float32 logits `[batch, target_length, vocab]`. Token id 0 is padding (and
  the decoder's start token); segment ids, when given, mark packed examples.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.compute_dtype,
                                param_dtype=cfg.parameter_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array,
             encoder_segment_ids: Optional[Array] = None, *,
             enable_dropout: bool = False) -> Array:
    return self.encoder(encoder_input_tokens, encoder_segment_ids,
                        deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array,
             decoder_input_tokens: Array, *,
             encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             enable_dropout: bool = False, decode: bool = False) -> Array:
    encoder_segments = ((encoder_input_tokens > 0).astype(jnp.int32)
                        if encoder_segment_ids is None else encoder_segment_ids)
    return self.decoder(encoded, encoder_segments, decoder_input_tokens,
                        decoder_segment_ids, deterministic=not enable_dropout,
                        decode=decode)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, *,
               encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               enable_dropout: bool = False) -> Array:
    del decoder_target_tokens  # Accepted for t5x compatibility; masks are causal.
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       enable_dropout=enable_dropout)


def init_params(config: T5Config, rng: Array, *, batch_size: int = 1,
                input_length: int = 8, target_length: int = 8):
  """Initialises boxed (logically annotated) parameters. Use under `jax.jit`."""
  model = T5(config)
  enc = jnp.ones((batch_size, input_length), jnp.int32)
  dec = jnp.ones((batch_size, target_length), jnp.int32)
  return model.init(rng, enc, dec)["params"]


# ------------------------------------------------- scanned <-> unscanned layout

_STACKS = (("encoder", "num_encoder_layers"), ("decoder", "num_decoder_layers"))


def _stack(trees: list, where: str):
  """One tree whose leaves are the given trees' leaves stacked on axis 0."""
  try:
    return jax.tree.map(
        lambda *xs: (jnp.stack(xs) if any(isinstance(x, jax.Array) for x in xs)
                     else np.stack([np.asarray(x) for x in xs])), *trees)
  except ValueError as e:  # Different structures or shapes between layers.
    raise errors.UserError(f"params: the layers of {where} do not match: {e}") from e


def scan_params(params: Any, config: T5Config) -> dict:
  """Unscanned parameters (`<stack>/layers_{i}/...`) -> scanned (`<stack>/layers/...`).

  Each stacked leaf has the layers on its leading axis, in layer order;
  everything else is passed through. Host (numpy) arrays stay on the host.
  """
  out = dict(params)
  for stack, count_field in _STACKS:
    node = dict(params.get(stack, {}))
    count = getattr(config, count_field)
    names = [f"layers_{i}" for i in range(count)]
    missing = [n for n in names if n not in node]
    if missing:
      raise errors.UserError(f"params: {stack}/{missing[0]} is missing (T5Config."
                             f"{count_field}={count}; is the tree already scanned?)")
    node["layers"] = _stack([node.pop(n) for n in names], stack)
    out[stack] = node
  return out


def unscan_params(params: Any, config: T5Config) -> dict:
  """Scanned parameters -> unscanned: the inverse of `scan_params`."""
  out = dict(params)
  for stack, count_field in _STACKS:
    node = dict(params.get(stack, {}))
    count = getattr(config, count_field)
    if "layers" not in node:
      raise errors.UserError(f"params: {stack}/layers is missing (is the tree already "
                             "unscanned?)")
    stacked = node.pop("layers")
    for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
      if not leaf.shape or leaf.shape[0] != count:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise errors.UserError(
            f"params: {stack}/layers/{name} has shape {tuple(leaf.shape)}; T5Config."
            f"{count_field}={count} needs {count} layers on its leading axis")
    for i in range(count):
      node[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    out[stack] = node
  return out


def is_scanned(params: Any) -> bool:
  """Whether a parameter tree has the scanned layout (`encoder/layers`)."""
  return "layers" in params.get("encoder", {})


def convert_params(params: Any, config: T5Config) -> dict:
  """`params` in the layout `config.scan_layers` asks for, from either layout.

  Used wherever parameters saved under one setting (an HF folder is always
  unscanned; a checkpoint records its own) are loaded for a config with the
  other.
  """
  if is_scanned(params) == config.scan_layers:
    return params
  return scan_params(params, config) if config.scan_layers else \
      unscan_params(params, config)
