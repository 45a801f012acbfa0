"""GPT-2 as a Flax linen module: Fine-tune-CoT's decoder-only students (124M-774M).

Numerics follow Hugging Face's PyTorch `GPT2LMHeadModel`: learned absolute
position embeddings, pre-LayerNorm blocks (with biases), attention and MLP
projections with biases, the tanh approximation of GELU (`gelu_new`), the output
layer tied to the token embedding, causal attention scaled by 1/sqrt(head_dim).
Same calling convention as `models.llama.LlamaModule` (positions, segment ids,
attention mask, an explicit mask and a KV cache under `decode`), so
`families.decoder_only` serves both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinythinker_jax import platforms
from tinythinker_jax.models import stacking
from tinythinker_jax.models.decoder_layers import (attend, cached, heads_first,
                                                   positions_and_mask, weight_dropout)
from tinythinker_jax.models.decoder_layers import param as _param

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int
  emb_dim: int
  num_heads: int
  num_layers: int
  mlp_dim: int = 0  # 0: 4 * emb_dim, as GPT-2's n_inner=None.
  max_position_embeddings: int = 1024
  layer_norm_eps: float = 1e-5
  # Training dropout on the embeddings, the attention weights and both residual
  # branches (transformers' embd_pdrop, attn_pdrop, resid_pdrop: GPT-2's own 0.1,
  # what Fine-tune-CoT fine-tunes with).
  dropout_rate: float = 0.0
  remat_policy: str = "none"  # 'none', 'full', 'minimal' (models.stacking)
  scan_layers: bool = False
  # A chat template around every prompt (an instruct student): the token ids
  # before and after it (`hf_tokenizer.HFTokenizer.chat_wrapping`), set by the
  # pipeline's CHAT_TEMPLATE; the prompt's EOS is dropped.
  prompt_prefix_ids: tuple[int, ...] = ()
  prompt_suffix_ids: tuple[int, ...] = ()
  dtype: str = "float32"  # Activations; 'auto' as T5's and Llama's.
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.emb_dim % self.num_heads:
      raise ValueError(f"GPT2Config: emb_dim={self.emb_dim} is not a multiple of "
                       f"num_heads={self.num_heads}")
    if self.remat_policy not in stacking.REMAT_POLICIES:
      raise ValueError(f"GPT2Config.remat_policy={self.remat_policy!r}; expected one of "
                       f"{stacking.REMAT_POLICIES}")

  @property
  def head_dim(self) -> int:
    return self.emb_dim // self.num_heads

  @property
  def inner_dim(self) -> int:
    return self.mlp_dim or 4 * self.emb_dim

  @property
  def compute_dtype(self):
    return jnp.dtype(platforms.activation_dtype(self.dtype))


class LayerNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",),
                   self.param_dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (x.shape[-1],), ("embed",),
                  self.param_dtype)
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(dtype)


class Attention(nn.Module):
  config: GPT2Config
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    init = nn.initializers.normal(0.02)
    qkv_kernel = _param(self, "qkv_kernel", init, (c.emb_dim, 3, c.num_heads, c.head_dim),
                        ("embed", "stack", "heads", "kv"), pdtype)
    qkv_bias = _param(self, "qkv_bias", nn.initializers.zeros, (3, c.num_heads, c.head_dim),
                      ("stack", "heads", "kv"), pdtype)
    qkv = jnp.einsum("bld,dthk->tblhk", x, qkv_kernel.astype(dtype)) + \
        qkv_bias.astype(dtype)[:, None, None]
    q, k, v = qkv[0], heads_first(qkv[1]), heads_first(qkv[2])
    if self.decode:
      k, v = cached(self, k, v)
    out = attend(q, k, v, mask, dtype, weight_dropout(c.dropout_rate, deterministic))
    kernel = _param(self, "out_kernel", init, (c.num_heads, c.head_dim, c.emb_dim),
                    ("heads", "kv", "embed"), pdtype)
    bias = _param(self, "out_bias", nn.initializers.zeros, (c.emb_dim,), ("embed",), pdtype)
    return jnp.einsum("blhk,hkd->bld", out, kernel.astype(dtype)) + bias.astype(dtype)


class Block(nn.Module):
  config: GPT2Config
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    init = nn.initializers.normal(0.02)
    dropout = nn.Dropout(c.dropout_rate)
    h = x + dropout(Attention(c, self.decode, name="attention")(
        LayerNorm(c.layer_norm_eps, pdtype, name="pre_attention_norm")(x), mask,
        deterministic), deterministic=deterministic)
    y = LayerNorm(c.layer_norm_eps, pdtype, name="pre_mlp_norm")(h)
    wi = _param(self, "mlp_in_kernel", init, (c.emb_dim, c.inner_dim), ("embed", "mlp"),
                pdtype)
    bi = _param(self, "mlp_in_bias", nn.initializers.zeros, (c.inner_dim,), ("mlp",), pdtype)
    wo = _param(self, "mlp_out_kernel", init, (c.inner_dim, c.emb_dim), ("mlp", "embed"),
                pdtype)
    bo = _param(self, "mlp_out_bias", nn.initializers.zeros, (c.emb_dim,), ("embed",), pdtype)
    y = jax.nn.gelu(y @ wi.astype(dtype) + bi.astype(dtype), approximate=True)
    x = h + dropout(y @ wo.astype(dtype) + bo.astype(dtype), deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, None) if c.scan_layers else x  # Under nn.scan: the carry.


class GPT2Module(nn.Module):
  """Token ids [batch, length] -> logits [batch, length, vocab]; the arguments
  are `models.llama.LlamaModule`'s."""

  config: GPT2Config
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: Array, positions: Optional[Array] = None,
               segment_ids: Optional[Array] = None,
               attention_mask: Optional[Array] = None,
               mask: Optional[Array] = None, deterministic: bool = True,
               logits_at: Optional[Array] = None) -> Array:
    c = self.config
    dtype, pdtype = c.compute_dtype, jnp.dtype(c.param_dtype)
    positions, mask = positions_and_mask(tokens, positions, segment_ids, attention_mask,
                                         mask)
    embedding = _param(self, "embedding", nn.initializers.normal(0.02),
                       (c.vocab_size, c.emb_dim), ("vocab", "embed"), pdtype)
    position_embedding = _param(self, "position_embedding", nn.initializers.normal(0.01),
                                (c.max_position_embeddings, c.emb_dim), (None, "embed"),
                                pdtype)
    x = (jnp.take(embedding, tokens, axis=0) +
         jnp.take(position_embedding, positions, axis=0)).astype(dtype)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = stacking.layer_stack(Block, c, c.num_layers, (3,), x, mask, deterministic,
                             layer_args=(self.decode,))
    if logits_at is not None:  # (the positions whose logits are wanted; as Llama's)
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
    x = LayerNorm(c.layer_norm_eps, pdtype, name="final_norm")(x)
    return jnp.einsum("bld,vd->blv", x, embedding.astype(dtype)).astype(jnp.float32)
