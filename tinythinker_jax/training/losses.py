"""Sequence losses: t5x's cross-entropy with z-loss and label smoothing."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_with_logits(logits: Array, soft_targets: Array,
                              z_loss: float = 0.0) -> tuple[Array, Array]:
  """Per-token cross-entropy against soft targets, plus `z_loss * logZ^2`.

  Returns `(loss, z_loss_term)`, both `[...]` (the vocab axis reduced); the
  loss already includes the z-loss term, which is returned for logging.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  loss = log_z - jnp.sum(soft_targets * logits, axis=-1)
  z_term = z_loss * jnp.square(log_z)
  return loss + z_term, z_term


def compute_weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array] = None, *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: Optional[float] = None) -> tuple[Array, Array, Array]:
  """t5x's weighted token cross-entropy.

  With label smoothing the targets put `1 - label_smoothing` on the gold token
  and spread the rest evenly, and the entropy of that distribution is
  subtracted so that a perfect model scores 0. Returns
  `(total_loss, total_z_loss, weight_sum)`; the totals are sums over tokens,
  divided by `loss_normalizing_factor` when given.
  """
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  normalizing_constant = -(
      confidence * jnp.log(confidence) +
      (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  one_hot = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
  soft_targets = one_hot * (confidence - low_confidence) + low_confidence
  loss, z_term = cross_entropy_with_logits(logits, soft_targets, z_loss)
  loss = loss - normalizing_constant
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  total_loss = jnp.sum(loss * weights)
  total_z = jnp.sum(z_term * weights)
  if loss_normalizing_factor is not None:
    total_loss = total_loss / loss_normalizing_factor
    total_z = total_z / loss_normalizing_factor
  return total_loss, total_z, jnp.sum(weights)
