"""Sequence losses: t5x's cross-entropy with z-loss and label smoothing."""

from __future__ import annotations

import functools
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
  loss, z_term, _ = cross_entropy_and_argmax_hits(logits, targets, confidence=confidence,
                                                  z_loss=z_loss)
  return loss, z_term


def cross_entropy_and_argmax_hits(logits: Array, targets: Array, *,
                                  confidence: float = 1.0,
                                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """`cross_entropy_with_logits`, and whether each target's logit is the maximum.

  The hit flag (for accuracy) reuses the maximum that the log-partition
  function needs, instead of a separate argmax pass over the logits; it
  differs from `argmax(logits) == targets` only on exact ties, which it counts
  as hits.

  The gradient is hand-written (as in t5x): the backward pass reads the
  logits once and writes `softmax * scale - soft_target` in one fused
  elementwise pass, in place of the logits, instead of keeping
  `exp(logits - max)` from the forward pass and scattering the gold-token
  gradient into a zero array of the logits' size. On a CPU, where the
  `[tokens, vocabulary]` arrays dominate the step's memory traffic and page
  faults for small models, this is a large part of the step.
  """
  # Flattened to [tokens, vocab], so that the gradient is an elementwise
  # function of an array of the same shape, which XLA writes in place.
  vocab_size = logits.shape[-1]
  loss, z_term, hits = _cross_entropy(
      logits.reshape((-1, vocab_size)).astype(jnp.float32), targets.reshape((-1,)),
      float(confidence), float(z_loss))
  shape = targets.shape
  return loss.reshape(shape), z_term.reshape(shape), hits.reshape(shape)


def _low_confidence(confidence: float, vocab_size: int) -> float:
  return (1.0 - confidence) / (vocab_size - 1)


def _cross_entropy_fwd(logits: Array, targets: Array, confidence: float,
                       z_loss: float):
  low_confidence = _low_confidence(confidence, logits.shape[-1])
  max_logit = jnp.max(logits, axis=-1)
  log_z = jnp.log(jnp.sum(jnp.exp(logits - max_logit[:, None]), axis=-1)) + max_logit
  gold = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  target_dot_logits = (confidence - low_confidence) * gold
  if low_confidence:
    target_dot_logits = target_dot_logits + low_confidence * jnp.sum(logits, axis=-1)
  z_term = z_loss * jnp.square(log_z)
  outputs = (log_z - target_dot_logits + z_term, z_term, gold >= max_logit)
  # Every forward read of the logits happens before the backward pass's one
  # read, so that XLA can write the gradient over the logits' buffer.
  outputs, logits, log_z = jax.lax.optimization_barrier((outputs, logits, log_z))
  return outputs, (logits, targets, log_z)


def _cross_entropy_bwd(confidence: float, z_loss: float, residuals, cotangents):
  logits, targets, log_z = residuals
  d_loss, d_z_term, _ = cotangents
  low_confidence = _low_confidence(confidence, logits.shape[-1])
  # d loss / d logits = (1 + 2 z logZ) softmax - soft_target, and
  # d z_term / d logits = 2 z logZ softmax.
  softmax_scale = d_loss + 2.0 * z_loss * log_z * (d_loss + d_z_term)
  gold = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == targets[:, None]
  soft_target = jnp.where(gold, confidence, low_confidence)
  d_logits = (jnp.exp(logits - log_z[:, None]) * softmax_scale[:, None] -
              soft_target * d_loss[:, None])
  return d_logits, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _cross_entropy(logits: Array, targets: Array, confidence: float,
                   z_loss: float) -> tuple[Array, Array, Array]:
  return _cross_entropy_fwd(logits, targets, confidence, z_loss)[0]


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


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
  return compute_weighted_cross_entropy_and_hits(
      logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss,
      loss_normalizing_factor=loss_normalizing_factor)[:3]


def compute_weighted_cross_entropy_and_hits(
    logits: Array, targets: Array, weights: Optional[Array] = None, *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: Optional[float] = None
) -> tuple[Array, Array, Array, Array]:
  """`compute_weighted_cross_entropy`, plus the weighted count of argmax hits.

  Returns `(total_loss, total_z_loss, weight_sum, hits)`, where `hits` sums
  the weights of the tokens whose target has the largest logit (see
  `cross_entropy_and_argmax_hits`); it is not normalized.
  """
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  normalizing_constant = -(
      confidence * math.log(confidence) +
      (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))
  loss, z_term, hits = cross_entropy_and_argmax_hits(logits, targets,
                                                     confidence=confidence,
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
  return total_loss, total_z, jnp.sum(weights), jnp.sum(hits * weights)


def token_logps(logits: Array, targets: Array) -> Array:
  """log p(target token) per position, 0 where `targets` is padding (0).

  The one sequence log-probability of the project: DPO's policy, the
  reference log-probabilities stored with preference pairs, and `score` all
  sum these, so the policy and its reference are computed by the same code.
  """
  logits = logits.astype(jnp.float32)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.where(targets > 0, gold - jax.nn.logsumexp(logits, axis=-1), 0.0)


def segment_sums(values: Array, segment_ids: Array, num_segments: int) -> Array:
  """Per-segment sums `[batch, num_segments]` of `values [batch, length]`.

  Segment `s` (1-based, as packing numbers them) lands in column `s - 1`;
  segment id 0 (padding) and ids above `num_segments` are dropped. An
  unpacked row is one segment: pass `segment_ids = targets > 0` and 1.
  """
  columns = jax.nn.one_hot(segment_ids - 1, num_segments, dtype=values.dtype)
  return jnp.einsum("bl,bls->bs", values, columns)
