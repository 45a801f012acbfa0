"""Preference losses (DPO, RPO, IPO) and phase 2's objective over the model interface.

With policy log-probabilities `pi_c, pi_r` and the reference policy's `ref_c,
ref_r` of the chosen and rejected sequences (summed over tokens, EOS included),
`h = (pi_c - ref_c) - (pi_r - ref_r)` and per pair:

- sigmoid DPO (Rafailov et al. 2023): `-log sigmoid(beta * h)`;
- IPO (Azar et al. 2023): `(h - 1 / (2 * beta)) ** 2`, with every log-probability
  averaged over its sequence's tokens, as TRL computes it;
- RPO (Pang et al. 2024, TinyThinker's phase 2) adds `alpha` times the chosen
  sequences' negative log-likelihood. By default it is averaged over all chosen
  tokens of the batch, as TRL 0.9.6 (the version TinyThinker ran) does with
  `CrossEntropyLoss`; `nll_normalization='sequence'` averages per sequence first.

`PreferenceObjective` plugs into the phase-1 trainer unchanged: like
`TokenCrossEntropy` it returns loss *sums* and metric sums, and the
normalizer (the number of real pairs), so microbatching composes exactly. The
batch-token NLL needs the whole batch's token count: the train step hands
`batch_totals(batch)`, taken before the batch is split, to every microbatch.

Packed pairs (`data.pair_arrays` with `pack=True`): the prompt, chosen and
rejected rows are packed together as seqio packs three features, so segment
`s` of a row's prompt, chosen and rejected rows is the same pair; the
per-pair features (`reference_*_logps`, `pair_weights`) are then `[rows,
max pairs per row]`, column `s - 1` holding segment `s`, and every per-pair
quantity here is a per-segment sum of token log-probabilities
(`losses.segment_sums`). Unpacked rows are the case of one segment per row.

Metrics follow TRL's names where they exist: `accuracy` (reward accuracy),
`chosen_reward`/`rejected_reward` (`beta` times the log-ratio), `margin`, and the
policy's `chosen_logp`/`rejected_logp` (summed over tokens, per pair).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from tinythinker_jax import errors
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.training import losses

Array = jax.Array
Batch = dict[str, Array]

SIGMOID = "sigmoid"
IPO = "ipo"
BATCH_TOKENS = "batch_tokens"  # TRL 0.9.6
SEQUENCE = "sequence"
PREFERENCE_FEATURES = ("encoder_input_tokens", "chosen_target_tokens",
                       "rejected_target_tokens", "reference_chosen_logps",
                       "reference_rejected_logps")
PACKED_PREFERENCE_FEATURES = PREFERENCE_FEATURES + (
    "encoder_segment_ids", "encoder_positions", "chosen_segment_ids", "chosen_positions",
    "rejected_segment_ids", "rejected_positions", "pair_weights")


def preference_losses(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array,
                      ref_rejected: Array, *, beta: float, loss_type: str = SIGMOID
                      ) -> tuple[Array, Array]:
  """Per-pair preference losses and the implicit reward margins `h`."""
  h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
  if loss_type == SIGMOID:
    return -jax.nn.log_sigmoid(beta * h), h
  if loss_type == IPO:
    return (h - 1.0 / (2.0 * beta)) ** 2, h
  raise errors.UserError(f"loss_type={loss_type!r}: expected {SIGMOID!r} or {IPO!r}")


@dataclasses.dataclass(frozen=True)
class PreferenceObjective:
  """DPO/IPO with an optional RPO NLL term, over (prompt, chosen, rejected) batches.

  Batch features: `encoder_input_tokens`, `chosen_target_tokens`,
  `rejected_target_tokens` ([batch, length], EOS-terminated, 0-padded),
  `reference_chosen_logps` and `reference_rejected_logps` ([batch]), and
  optionally `pair_weights` ([batch]; 0 for padding rows). Packed rows add
  `encoder_segment_ids`, `chosen_segment_ids`, `rejected_segment_ids` and
  (`*_positions`, unused by T5), with per-pair features `[batch, pairs]`.
  """

  model: BaseModel
  beta: float = 0.5
  alpha: float = 0.5  # RPO's NLL weight; 0 for plain DPO/IPO
  loss_type: str = SIGMOID
  z_loss: float = 0.0  # t5x's z-loss on the policy's logits, per real token
  nll_normalization: str = BATCH_TOKENS

  def __post_init__(self):
    if self.loss_type not in (SIGMOID, IPO):
      raise errors.UserError(f"loss_type={self.loss_type!r}: expected {SIGMOID!r} or {IPO!r}")
    if self.beta <= 0:
      raise errors.UserError(f"beta={self.beta} must be > 0")
    if self.nll_normalization not in (BATCH_TOKENS, SEQUENCE):
      raise errors.UserError(f"nll_normalization={self.nll_normalization!r}: expected "
                             f"{BATCH_TOKENS!r} or {SEQUENCE!r}")

  def policy_logps(self, params: Any, batch: Batch,
                   dropout_rng: Optional[Array] = None) -> tuple[Array, ...]:
    """(chosen logp, chosen length, rejected logp, rejected length, z-loss term),
    each `[rows, pairs per row]`, from one forward pass over the chosen and
    rejected rows."""
    chosen, rejected = batch["chosen_target_tokens"], batch["rejected_target_tokens"]
    n, num_pairs = chosen.shape[0], _num_pairs(batch)
    enc = jnp.concatenate([batch["encoder_input_tokens"]] * 2, axis=0)
    targets = jnp.concatenate([chosen, rejected], axis=0)
    segments = jnp.concatenate([_segments(batch, "chosen"), _segments(batch, "rejected")],
                               axis=0)
    packed = "chosen_segment_ids" in batch
    token_logps, logits = self.model.token_logps(
        params, enc, targets, dropout_rng=dropout_rng,
        input_segment_ids=(jnp.concatenate([batch["encoder_segment_ids"]] * 2, axis=0)
                           if packed else None),
        target_segment_ids=segments if packed else None)
    mask = (targets > 0).astype(jnp.float32)
    logps = losses.segment_sums(token_logps, segments, num_pairs)
    lengths = losses.segment_sums(mask, segments, num_pairs)
    z = jnp.zeros((n, num_pairs), jnp.float32)
    if self.z_loss:
      log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
      per_pair = losses.segment_sums(jnp.square(log_z) * mask, segments,
                                     num_pairs) / jnp.maximum(lengths, 1.0)
      z = self.z_loss * (per_pair[:n] + per_pair[n:])
    return logps[:n], lengths[:n], logps[n:], lengths[n:], z

  @staticmethod
  def batch_totals(batch: Batch) -> dict[str, Array]:
    """Whole-batch counts the loss is normalised by: real pairs and their chosen
    tokens (padding rows and slots, `pair_weights` 0, count for neither)."""
    weights = _weights(batch)
    tokens = losses.segment_sums(
        (batch["chosen_target_tokens"] > 0).astype(jnp.float32),
        _segments(batch, "chosen"), _num_pairs(batch))
    return {"pairs": jnp.sum(weights), "chosen_tokens": jnp.sum(weights * tokens)}

  def loss_sums(self, params: Any, batch: Batch, dropout_rng: Optional[Array] = None,
                totals: Optional[dict[str, Array]] = None
                ) -> tuple[Array, dict[str, Array]]:
    """Loss and metric sums over the pairs; `totals` are the whole batch's
    `batch_totals` when `batch` is one microbatch of it."""
    totals = self.batch_totals(batch) if totals is None else totals
    pi_c, len_c, pi_r, len_r, z = self.policy_logps(params, batch, dropout_rng)
    ref_c = _per_pair(batch["reference_chosen_logps"])
    ref_r = _per_pair(batch["reference_rejected_logps"])
    weights = _weights(batch)
    if self.loss_type == IPO:  # TRL: IPO on per-token average log-probabilities
      c, r = jnp.maximum(len_c, 1.0), jnp.maximum(len_r, 1.0)
      pref, h = preference_losses(pi_c / c, pi_r / r, ref_c / c, ref_r / r,
                                  beta=self.beta, loss_type=IPO)
      chosen_reward = self.beta * (pi_c - ref_c) / c
      rejected_reward = self.beta * (pi_r - ref_r) / r
    else:
      pref, h = preference_losses(pi_c, pi_r, ref_c, ref_r, beta=self.beta,
                                  loss_type=self.loss_type)
      chosen_reward, rejected_reward = self.beta * (pi_c - ref_c), self.beta * (pi_r - ref_r)
    if self.nll_normalization == BATCH_TOKENS:
      # Summed over pairs and divided by the pairs by the trainer, this is the
      # batch's total chosen NLL over its total chosen tokens.
      nll = -pi_c * totals["pairs"] / jnp.maximum(totals["chosen_tokens"], 1.0)
    else:
      nll = -pi_c / jnp.maximum(len_c, 1.0)
    per_pair = pref + self.alpha * nll + z
    loss = jnp.sum(weights * per_pair)
    return loss, {
        "loss": loss, "preference_loss": jnp.sum(weights * pref),
        "nll": jnp.sum(weights * nll), "z_loss": jnp.sum(weights * z),
        "num_examples": jnp.sum(weights),
        "reward_accuracy": jnp.sum(weights * (h > 0)),
        "chosen_reward": jnp.sum(weights * chosen_reward),
        "rejected_reward": jnp.sum(weights * rejected_reward),
        "chosen_logp": jnp.sum(weights * pi_c),
        "rejected_logp": jnp.sum(weights * pi_r),
    }

  def normalizer(self, sums: dict[str, Array]) -> Array:
    return jnp.maximum(sums["num_examples"], 1.0)

  def metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    n = self.normalizer(sums)
    chosen, rejected = sums["chosen_reward"] / n, sums["rejected_reward"] / n
    return {"loss": sums["loss"] / n, "preference_loss": sums["preference_loss"] / n,
            "nll": sums["nll"] / n, "z_loss": sums["z_loss"] / n,
            "accuracy": sums["reward_accuracy"] / n,
            "chosen_reward": chosen, "rejected_reward": rejected,
            "margin": chosen - rejected, "chosen_logp": sums["chosen_logp"] / n,
            "rejected_logp": sums["rejected_logp"] / n, "examples": sums["num_examples"]}


def _per_pair(x: Array) -> Array:
  """`[rows, pairs per row]` from `[rows]` (unpacked) or `[rows, pairs]` (packed)."""
  x = x.astype(jnp.float32)
  return x[:, None] if x.ndim == 1 else x


def _num_pairs(batch: Batch) -> int:
  """Pair slots per row: 1 unpacked; the per-pair features' width when packed."""
  return _per_pair(batch["reference_chosen_logps"]).shape[1]


def _segments(batch: Batch, name: str) -> Array:
  """Segment ids of the `name` target rows; an unpacked row is segment 1."""
  ids = batch.get(f"{name}_segment_ids")
  return ((batch[f"{name}_target_tokens"] > 0).astype(jnp.int32) if ids is None
          else ids)


def _weights(batch: Batch) -> Array:
  weights = batch.get("pair_weights")
  ones = jnp.ones((batch["chosen_target_tokens"].shape[0], _num_pairs(batch)),
                  jnp.float32)
  return ones if weights is None else _per_pair(weights)
