"""Training objectives over the model interface; the trainer owns the step.

An objective holds a `models.base.BaseModel` and returns loss *sums* and
metric sums for a batch, so that gradient accumulation over microbatches and
t5x's loss-normalizing factor compose exactly: the step divides once, by the
normalizer of the whole global batch. Phase 1's is `TokenCrossEntropy`;
phase 2's is `training.dpo.PreferenceObjective`. Each calls the model's
`logits` / `token_logps` only, so it serves every family.

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
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.training import losses

Array = jax.Array
Batch = dict[str, Array]

# t5x's named loss-normalizing factors (a float is also accepted).
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"


@dataclasses.dataclass(frozen=True)
class TokenCrossEntropy:
  """Teacher-forced token cross-entropy (z-loss, label smoothing) of a model."""

  model: BaseModel
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
    logits = self.model.logits(params, batch, dropout_rng=dropout_rng)
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
