"""Sequence losses: t5x's cross-entropy with z-loss and label smoothing."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_with_logits(logits: Array, targets: Array, *, confidence: float = 1.0,
                              z_loss: float = 0.0) -> tuple[Array, Array]:
  """Per-token cross-entropy against smoothed one-hot targets, plus `z_loss * logZ^2`.

  The soft target puts `confidence` on the gold token and spreads the rest
  evenly over the other tokens. Its inner product with the logits is
  `low * sum(logits) + (confidence - low) * logits[target]`, so no one-hot
  array of vocabulary size is ever built. Returns `(loss, z_loss_term)`,
  both shaped like `targets`; the loss includes the z-loss term.
  """
  logits = logits.astype(jnp.float32)
  vocab_size = logits.shape[-1]
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  target_dot_logits = (confidence - low_confidence) * gold
  if low_confidence:
    target_dot_logits = target_dot_logits + low_confidence * jnp.sum(logits, axis=-1)
  z_term = z_loss * jnp.square(log_z)
  return log_z - target_dot_logits + z_term, z_term


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
      confidence * math.log(confidence) +
      (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))
  loss, z_term = cross_entropy_with_logits(logits, targets, confidence=confidence,
                                           z_loss=z_loss)
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


def token_logps(logits: Array, targets: Array) -> Array:
  """log p(target token) per position, 0 where `targets` is padding (0).

  The one sequence log-probability of the project: DPO's policy, the
  reference log-probabilities stored with preference pairs, and `score` all
  sum these, so the policy and its reference are computed by the same code.
  """
  logits = logits.astype(jnp.float32)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.where(targets > 0, gold - jax.nn.logsumexp(logits, axis=-1), 0.0)
