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

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinythinker_jax.models import stacking
from tinythinker_jax.models.t5_config import T5Config  # noqa: F401  (t5.T5Config, as gin names it)
from tinythinker_jax.models.t5_layers import (NEG_INF, DecoderLayer, DenseGeneral,  # noqa: F401
                                              Embed, EncoderLayer, RelativePositionBiases, RMSNorm,
                                              relative_position_bucket, _constrain)

Array = jax.Array


def _layer_stack(layer_cls, cfg: T5Config, num_layers: int,
                 static_argnums: tuple[int, ...], *args) -> Array:
  """`stacking.layer_stack`: unscanned, layer i is `layers_{i}` (t5x's names);
  scanned, one `layers` submodule under `nn.scan`."""
  return stacking.layer_stack(layer_cls, cfg, num_layers, static_argnums, *args)


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


def _stacks(config: T5Config) -> list[stacking.Stack]:
  return [(stack, getattr(config, field), f"T5Config.{field}") for stack, field in _STACKS]


def scan_params(params: Any, config: T5Config) -> dict:
  """Unscanned parameters (`<stack>/layers_{i}/...`) -> scanned (`<stack>/layers/...`).

  Each stacked leaf has the layers on its leading axis, in layer order;
  everything else is passed through. Host (numpy) arrays stay on the host.
  """
  return stacking.stack_layers(params, _stacks(config))


def unscan_params(params: Any, config: T5Config) -> dict:
  """Scanned parameters -> unscanned: the inverse of `scan_params`."""
  return stacking.unstack_layers(params, _stacks(config))


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
