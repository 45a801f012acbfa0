"""Model FLOPs of a T5 encoder-decoder, from its config (for MFU).

The standard count (Kaplan et al. 2020; PaLM's appendix B): a matmul with a
weight of N entries costs 2·N FLOPs per token forward and twice that backward,
so training costs 6·N FLOPs per token, plus the attention scores and their
weighted sums, which have no weights. Written out for an encoder-decoder:

  per input token:   each encoder layer's attention (q, k, v, o: 4·d·h) and MLP
                     ((a+1)·d·f for `a` input projections: 2 for gated GELU),
                     and each decoder layer's cross-attention keys and values
                     (2·d·h) of the encoder's output;
  per target token:  each decoder layer's self-attention (4·d·h), cross-attention
                     queries and output (2·d·h) and MLP, and the output layer
                     (d·V, tied or not);
  attention:         2·2·(queries·keys)·h per layer and sequence: q·kᵀ and the
                     weighted sum of v, over full (padded) lengths as computed:
                     encoder T_in², decoder self T_tgt², cross T_tgt·T_in.

with d = emb_dim, h = num_heads·head_dim, f = mlp_dim. Embedding lookups,
norms, softmax and the loss are not counted (as in the standard count). A
training step is 3x the forward pass (the backward computes two matmuls per
forward one); rematerialisation adds hardware FLOPs, not model FLOPs.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

from tinythinker_jax.models import t5


@dataclasses.dataclass(frozen=True)
class MatmulWeights:
  """Weight entries a token passes through in one forward pass."""

  per_input_token: int  # encoder layers + the decoder's cross-attention k, v
  per_target_token: int  # decoder layers + the output layer


def matmul_weights(config: t5.T5Config) -> MatmulWeights:
  d, h, f = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  mlp = (len(config.mlp_activations) + 1) * d * f
  encoder_layer = 4 * d * h + mlp
  decoder_layer = 4 * d * h + 2 * d * h + mlp
  cross_kv = 2 * d * h
  return MatmulWeights(
      per_input_token=config.num_encoder_layers * encoder_layer +
      config.num_decoder_layers * cross_kv,
      per_target_token=config.num_decoder_layers * decoder_layer +
      d * config.vocab_size)


def attention_flops(config: t5.T5Config, input_length: int, target_length: int) -> int:
  """One sequence's forward attention FLOPs (scores and weighted sums)."""
  h = config.num_heads * config.head_dim
  return 4 * h * (config.num_encoder_layers * input_length * input_length +
                  config.num_decoder_layers * (target_length * target_length +
                                               target_length * input_length))


def forward_flops(config: t5.T5Config, batch: int, input_length: int,
                  target_length: int) -> int:
  """A teacher-forced forward pass over `batch` sequences of these lengths."""
  weights = matmul_weights(config)
  per_sequence = (2 * (weights.per_input_token * input_length +
                       weights.per_target_token * target_length) +
                  attention_flops(config, input_length, target_length))
  return batch * per_sequence


def train_step_flops(config: t5.T5Config, batch: int, input_length: int,
                     target_length: int) -> int:
  """Forward and backward: 6·N per token plus 3x the attention terms."""
  return 3 * forward_flops(config, batch, input_length, target_length)


def batch_step_flops(config: t5.T5Config, shapes: Mapping[str, Sequence[int]]
                     ) -> Optional[int]:
  """A training step's model FLOPs from its batch's feature shapes: phase 1
  (`decoder_target_tokens`), or preference pairs, whose policy runs chosen and
  rejected targets as one batch with the inputs repeated (TRL's concatenated
  forward); None for other features."""
  if "encoder_input_tokens" not in shapes:
    return None
  batch, input_length = shapes["encoder_input_tokens"][:2]
  if "decoder_target_tokens" in shapes:
    return train_step_flops(config, batch, input_length, shapes["decoder_target_tokens"][1])
  if "chosen_target_tokens" in shapes and "rejected_target_tokens" in shapes:
    return sum(train_step_flops(config, batch, input_length, shapes[k][1])
               for k in ("chosen_target_tokens", "rejected_target_tokens"))
  return None


def encode_flops(config: t5.T5Config, input_length: int) -> int:
  """Encoding one input of `input_length` (and its cross-attention keys, values)."""
  weights = matmul_weights(config)
  h = config.num_heads * config.head_dim
  return (2 * weights.per_input_token * input_length +
          4 * h * config.num_encoder_layers * input_length * input_length)


def decode_steps_flops(config: t5.T5Config, input_length: int, new_tokens: int) -> int:
  """One row's `new_tokens` cached decoder steps: step t (0-based) attends to
  the t+1 positions written so far and to all `input_length` encoder positions."""
  weights = matmul_weights(config)
  h = config.num_heads * config.head_dim
  n = int(new_tokens)
  attended = n * (n + 1) // 2 + n * input_length  # sum over t of (t + 1) + input_length
  return 2 * weights.per_target_token * n + 4 * h * config.num_decoder_layers * attended


def decode_flops(config: t5.T5Config, batch: int, input_length: int,
                 new_tokens: int, num_samples: int = 1) -> int:
  """Encoding `batch` inputs once, then `new_tokens` cached decoder steps for
  each of their `num_samples` rows.

  Model FLOPs, the useful work: the cross-attention keys and values are
  counted once per input. Our decoder computes more than that (`decoding`:
  keys and values per sample row, attention over the whole preallocated
  cache), which MFU does not credit.
  """
  return batch * (encode_flops(config, input_length) +
                  num_samples * decode_steps_flops(config, input_length, new_tokens))
