"""The Llama architecture (and its common variants) as a Flax linen module: the
decoder-only family that students are today (Llama 2/3, SmolLM, Qwen2).

Variants, from the config: grouped-query attention (`num_kv_heads`), tied or
untied input and output embeddings, attention biases on the query, key and
value projections (Qwen2), the RoPE base (`rope_theta`). Numerics follow
Hugging Face's PyTorch `LlamaForCausalLM` / `Qwen2ForCausalLM`: RMS norm in
float32, rotary embeddings on the two halves of each head (`rotate_half`),
SiLU-gated MLP, causal attention scaled by 1/sqrt(head_dim).

Parameters and activations carry t5x-style logical axis names, so the
partitioning rules (FSDP included) apply as they do to T5.

Behind the model interface as `families.decoder_only.DecoderOnlyModel`
(training, cached decoding, export, gin files `models/llama/*.gin`); weights
from Hugging Face folders (`convert.hf_llama`) and GGUF files
(`convert.gguf_llama`). What is not built yet is listed in the README.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinythinker_jax import platforms
from tinythinker_jax.models import stacking
# The decoder layers both decoder-only families share (GPT-2 takes them too).
from tinythinker_jax.models.decoder_layers import (attend, cached, heads_first, param,
                                                   positions_and_mask, weight_dropout)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  num_layers: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  attention_bias: bool = False  # Qwen2: biases on the q, k and v projections.
  max_position_embeddings: int = 2048
  # On the attention weights in training, as transformers' `attention_dropout`
  # (0 in the published Llama, SmolLM and Qwen2 configs).
  dropout_rate: float = 0.0
  remat_policy: str = "none"  # 'none', 'full', 'minimal' (models.stacking)
  scan_layers: bool = False  # one nn.scan over the layers (models.stacking)
  # A chat template around every prompt (an instruct student): the token ids
  # before and after it (`hf_tokenizer.HFTokenizer.chat_wrapping`), set by the
  # pipeline's CHAT_TEMPLATE; the prompt's EOS is dropped.
  prompt_prefix_ids: tuple[int, ...] = ()
  prompt_suffix_ids: tuple[int, ...] = ()
  # Activations; 'auto' is bfloat16 on TPUs and GPUs, float32 on CPUs.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def compute_dtype(self):
    """The activations' dtype, 'auto' resolved where the model runs (as T5's)."""
    return jnp.dtype(platforms.activation_dtype(self.dtype))

  def __post_init__(self):
    if self.remat_policy not in stacking.REMAT_POLICIES:
      raise ValueError(f"LlamaConfig.remat_policy={self.remat_policy!r}; expected one of "
                       f"{stacking.REMAT_POLICIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig: num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   self.param_dtype)
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * x).astype(dtype)


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embeddings on `x` [batch, length, heads, head_dim] at `positions`
  [batch, length], the halves of each head rotated together (HF's rotate_half)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1]))
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, l, half]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query causal attention. With `decode`, keys and values go into a
  'cache' collection at its running index (sized by the first, initialising
  call), and `mask` covers the whole cache."""

  config: LlamaConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               deterministic: bool = True) -> Array:
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    init = nn.initializers.normal(0.02)

    def project(name, heads, kernel_axes):
      kernel = param(self, f"{name}_kernel", init, (c.emb_dim, heads, c.head_dim),
                      kernel_axes, pdtype)
      y = jnp.einsum("bld,dhk->blhk", x, kernel.astype(dtype))
      if c.attention_bias:
        bias = param(self, f"{name}_bias", nn.initializers.zeros, (heads, c.head_dim),
                      kernel_axes[1:], pdtype)
        y = y + bias.astype(dtype)
      return y

    q = project("query", c.num_heads, ("embed", "heads", "kv"))
    k = project("key", c.num_kv_heads, ("embed", "kv_heads", "kv"))
    v = project("value", c.num_kv_heads, ("embed", "kv_heads", "kv"))
    q, k = rotary(q, positions, c.rope_theta), rotary(k, positions, c.rope_theta)
    k, v = heads_first(k), heads_first(v)
    if self.decode:
      k, v = cached(self, k, v)
    out = attend(q, k, v, mask, dtype, weight_dropout(c.dropout_rate, deterministic))
    kernel = param(self, "out_kernel", init, (c.num_heads, c.head_dim, c.emb_dim),
                    ("heads", "kv", "embed"), pdtype)
    return jnp.einsum("blhk,hkd->bld", out, kernel.astype(dtype))


class Mlp(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    init = nn.initializers.normal(0.02)
    gate = param(self, "gate_kernel", init, (c.emb_dim, c.mlp_dim), ("embed", "mlp"), pdtype)
    up = param(self, "up_kernel", init, (c.emb_dim, c.mlp_dim), ("embed", "mlp"), pdtype)
    down = param(self, "down_kernel", init, (c.mlp_dim, c.emb_dim), ("mlp", "embed"),
                  pdtype)
    hidden = jax.nn.silu(x @ gate.astype(dtype)) * (x @ up.astype(dtype))
    return hidden @ down.astype(dtype)


class Block(nn.Module):
  config: LlamaConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               deterministic: bool = True) -> Array:
    c = self.config
    pdtype = jnp.dtype(c.param_dtype)
    h = x + Attention(c, self.decode, name="attention")(
        RMSNorm(c.rms_norm_eps, pdtype, name="pre_attention_norm")(x), positions, mask,
        deterministic)
    x = h + Mlp(c, name="mlp")(RMSNorm(c.rms_norm_eps, pdtype, name="pre_mlp_norm")(h))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, None) if c.scan_layers else x  # Under nn.scan: the carry.


class LlamaModule(nn.Module):
  """Token ids [batch, length] -> logits [batch, length, vocab]. With `decode`,
  attention reads and extends a KV cache (`families.decoder_only.decode`)."""

  config: LlamaConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: Array, positions: Optional[Array] = None,
               segment_ids: Optional[Array] = None,
               attention_mask: Optional[Array] = None,
               mask: Optional[Array] = None, deterministic: bool = True,
               logits_at: Optional[Array] = None) -> Array:
    """`positions` default to 0..L-1; `segment_ids` (packing) keep attention
    inside each segment; `attention_mask` [batch, length] (1 = a real token)
    hides padding, as transformers' mask does. `mask` [batch, length, keys]
    replaces all three (decoding: the keys are the cache's). Dropout applies
    when not `deterministic` (a 'dropout' rng). `logits_at` [batch, n]: the
    positions whose logits are wanted ([batch, n, vocab] comes back): the output
    layer, the largest matrix of a small model with a large vocabulary, then
    runs on those positions only (a completion's, or a prompt's last)."""
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    positions, mask = positions_and_mask(tokens, positions, segment_ids, attention_mask,
                                         mask)
    embedding = param(self, "embedding", nn.initializers.normal(0.02),
                       (c.vocab_size, c.emb_dim), ("vocab", "embed"), pdtype)
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = stacking.layer_stack(Block, c, c.num_layers, (4,), x, positions, mask,
                             deterministic, layer_args=(self.decode,))
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
    x = RMSNorm(c.rms_norm_eps, pdtype, name="final_norm")(x)
    if c.tie_word_embeddings:
      return jnp.einsum("bld,vd->blv", x, embedding.astype(dtype)).astype(jnp.float32)
    head = param(self, "lm_head", nn.initializers.normal(0.02), (c.emb_dim, c.vocab_size),
                  ("embed", "vocab"), pdtype)
    return (x @ head.astype(dtype)).astype(jnp.float32)
