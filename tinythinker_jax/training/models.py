"""Models own their losses; the trainer owns the step.

A model here wraps a Flax module and returns loss *sums* and metric sums for a
batch, so that gradient accumulation over microbatches and t5x's
loss-normalizing factor compose exactly: the step divides once, by the
normalizer of the whole global batch.

Packed batches (seqio's `EncDecFeatureConverter(pack=True)` features) carry
`encoder_segment_ids` and `decoder_segment_ids`; the model is called with them,
so attention stays within each example, and T5's relative positions need no
`*_positions` (within a segment they are unchanged by packing; t5x's T5 does
not read the positions either). The loss is a sum over tokens weighted by
`decoder_loss_weights`, so a packed batch gives the same sums and normalizer
as the same examples unpacked.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from tinythinker_jax import errors
from tinythinker_jax.models.t5 import T5
from tinythinker_jax.training import losses, step

Array = jax.Array
Batch = dict[str, Array]

# t5x's named loss-normalizing factors (a float is also accepted).
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
  """Teacher-forced token cross-entropy (z-loss, label smoothing) of a T5."""

  module: T5
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Union[str, float, None] = NUM_REAL_TARGET_TOKENS

  def __post_init__(self):
    factor = self.loss_normalizing_factor
    if not (factor is None or isinstance(factor, (int, float)) or
            factor in (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS)):
      raise errors.UserError(f"loss_normalizing_factor={factor!r}: expected a number, None, "
                       f"{NUM_REAL_TARGET_TOKENS!r} or {NUM_TOTAL_TARGET_TOKENS!r}")

  def loss_sums(self, params: Any, batch: Batch,
                dropout_rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
    """(sum of token losses, metric sums) for a (micro)batch."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    logits = self.module.apply({"params": params}, batch["encoder_input_tokens"],
                               batch["decoder_input_tokens"],
                               encoder_segment_ids=batch.get("encoder_segment_ids"),
                               decoder_segment_ids=batch.get("decoder_segment_ids"),
                               enable_dropout=dropout_rng is not None, rngs=rngs)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
      weights = (targets > 0).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    # Examples: segment starts (position 0) with a weight; one per unpacked row.
    positions = batch.get("decoder_positions")
    starts = (jnp.arange(targets.shape[1])[None, :] == 0 if positions is None
              else positions == 0)
    # `correct` counts tokens whose target has the largest logit; it comes from
    # the loss's own pass over the logits (no separate argmax pass).
    loss, z_loss, weight_sum, correct = losses.compute_weighted_cross_entropy_and_hits(
        logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss)
    return loss, {"loss": loss, "z_loss": z_loss, "weight_sum": weight_sum,
                  "correct": correct, "num_examples": jnp.sum(weights * starts),
                  "total_tokens": jnp.asarray(targets.size, jnp.float32)}

  def normalizer(self, sums: dict[str, Array]) -> Array:
    """The divisor of the summed loss for the whole global batch."""
    factor = self.loss_normalizing_factor
    if factor == NUM_REAL_TARGET_TOKENS:
      return jnp.maximum(sums["weight_sum"], 1.0)
    if factor == NUM_TOTAL_TARGET_TOKENS:
      return sums["total_tokens"]
    return jnp.asarray(1.0 if factor is None else float(factor), jnp.float32)

  def metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    """Per-batch metrics from metric sums."""
    denom = self.normalizer(sums)
    tokens = jnp.maximum(sums["weight_sum"], 1.0)
    return {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom,
            "accuracy": sums["correct"] / tokens, "target_tokens": sums["weight_sum"],
            "examples": sums["num_examples"]}


def target_token_logps(module: T5, params: Any, encoder_input_tokens: Array,
                       targets: Array, dropout_rng: Optional[Array] = None, *,
                       encoder_segment_ids: Optional[Array] = None,
                       decoder_segment_ids: Optional[Array] = None
                       ) -> tuple[Array, Array]:
  """Teacher-forced `(token log-probs [batch, length], logits)` of `targets`.

  `targets` are EOS-terminated and 0-padded; the decoder reads them shifted
  right (`step.shift_right`, within each segment of packed rows, whose
  segment ids are then given). Padding positions have log-probability 0.
  Sequence log-probabilities are the sums of these over each sequence
  (`losses.segment_sums` for packed rows).
  """
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  logits = module.apply({"params": params}, encoder_input_tokens,
                        step.shift_right(targets, decoder_segment_ids),
                        encoder_segment_ids=encoder_segment_ids,
                        decoder_segment_ids=decoder_segment_ids,
                        enable_dropout=dropout_rng is not None, rngs=rngs)
  return losses.token_logps(logits, targets), logits
