"""Distillation from a teacher's token distribution: the per-token divergences.

`token_divergence` compares the student's and the teacher's next-token
distributions at every position (logits over the same vocabulary), after
dividing both by `temperature`, as the generalized Jensen-Shannon divergence of
GKD (Agarwal et al. 2024) with TRL's convention for `beta`:

- `beta = 0`: forward KL, KL(teacher || student) (mean-seeking; what
  sequence-level distillation approximates);
- `beta = 1`: reverse KL, KL(student || teacher) (mode-seeking; on-policy
  distillation's);
- `0 < beta < 1`: with the mixture M = beta * teacher + (1 - beta) * student,
  beta * KL(teacher || M) + (1 - beta) * KL(student || M).
  (EasyDeL writes the same family with beta mirrored: its beta is 1 - ours.)

`topk_token_divergence` does the same against a teacher known only by its top-k
log-probabilities at each position (what an OpenAI-compatible server returns as
`top_logprobs`, or a stored offline teacher): both distributions become k + 1
outcomes, the k tokens and one "rest" bucket holding the remaining mass
(the teacher's 1 - sum of its top-k probabilities; the student's, the same for
its own probabilities of those k tokens), so no mass is dropped or renormalised
away. Slots with log-prob -inf are empty (a position with fewer than k tokens).
A server's log-probs are its model's distribution before its sampling settings
(llama.cpp and OpenAI), so the top-k form takes no temperature.

Both return `[batch, length]` divergences; `masked_sum` adds them over the
positions a loss covers (completion tokens, padding weighted 0), so that the
trainer's normaliser (t5x's NUM_REAL_TARGET_TOKENS) averages them over tokens.
Pure functions of arrays: jittable, differentiable in the student's logits.

`DistillationObjective` trains a student with them against a teacher model
(any model the project loads whose tokenizer is the student's; its parameters
on the mesh beside the student's, no optimizer state) in the trainer's step:

- *offline logit distillation*: the batch's targets are the records' text (the
  rationales a teacher LLM, or the rule-based teacher, wrote); the teacher model
  reads them too, and the student matches its
  distribution at every completion token (plus `supervised_weight` times the
  token cross-entropy on the same targets, 0 by default);
- *on-policy distillation* (GKD, Agarwal et al. 2024; TRL's `lmbda`): on a
  fraction `on_policy_fraction` of the steps the student first samples its own
  completions of the batch's prompts with its KV-cached sampler (at
  `sample_temperature`, `target_length` tokens at most, without gradient), and
  the divergence is taken on those tokens (no cross-entropy there: its own
  samples are not targets). Which steps are on-policy is drawn per step from
  the run's seed and the step number (`on_policy_at`), so a resumed run draws
  the same steps and a budget's step count is exact;
- *offline top-k distillation* (`teacher=None`): the teacher is an
  OpenAI-compatible server whose top-k log-probs were stored with its chains
  (`teacher.logprobs` attaches them to the arrays as `teacher_topk_*`
  features); the student matches them with `topk_token_divergence` where a
  chain covers a target position, plus `supervised_weight` times the
  cross-entropy on every target token. The teacher's forward passes were paid
  for by its server, so a step counts none;
- sequence-level distillation (Kim and Rush 2016) is plain phase 1 on the
  teacher's sampled chains: Fine-tune-CoT.

Teacher and student may have different numbers of embedding rows for one
tokenizer (a table padded to a multiple): both distributions are taken over the
tokenizer's `vocab_rows` ids, rows beyond them ignored. The teacher's forward
passes (and the on-policy sampling) are counted in the step's FLOPs
(`extra_step_flops`), so budgets and compute-matched comparisons stay honest.
Sampling is counted at its upper bound (every row decoded to the target
length, though the loop stops once every row has ended): an on-policy student
is charged at least what it spent. On an on-policy step the trainer's
`train_tokens` count the sampled tokens the loss covered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax import errors
from tinythinker_jax.data import arrays
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.training import losses, objectives
from tinythinker_jax.training import step as step_lib

Array = jax.Array
Batch = dict[str, Array]
_TINY = 1e-30
_EMPTY = -1e30


def _check_beta(beta: float) -> float:
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta={beta}: must be in [0, 1] (0: forward KL, 1: reverse KL)")
  return beta


def _kl(log_p: Array, log_q: Array) -> Array:
  """KL(p || q) over the last axis, from log-probabilities (0 log 0 = 0)."""
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def _generalized_jsd(log_student: Array, log_teacher: Array, beta: float) -> Array:
  if beta == 0.0:
    return _kl(log_teacher, log_student)
  if beta == 1.0:
    return _kl(log_student, log_teacher)
  log_mixture = jnp.logaddexp(log_teacher + jnp.log(beta),
                              log_student + jnp.log1p(-beta))
  return (beta * _kl(log_teacher, log_mixture) +
          (1.0 - beta) * _kl(log_student, log_mixture))


def token_divergence(student_logits: Array, teacher_logits: Array, *, beta: float = 0.5,
                     temperature: float = 1.0) -> Array:
  """Generalized JSD per position `[batch, length]` of full-vocabulary logits
  `[batch, length, vocab]` (the same vocabulary; see the module docstring)."""
  beta = _check_beta(beta)
  if temperature <= 0:
    raise ValueError(f"temperature={temperature}: must be positive")
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} differ: the same vocabulary is required")
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  log_teacher = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, -1)
  return _generalized_jsd(log_student, log_teacher, beta)


def _with_rest(log_probs: Array) -> Array:
  """k log-probabilities and the log of the mass they leave, `[..., k + 1]`."""
  total = jnp.sum(jnp.exp(log_probs), axis=-1, keepdims=True)
  rest = jnp.log(jnp.maximum(1.0 - total, _TINY))
  return jnp.concatenate([log_probs, rest], axis=-1)


def topk_token_divergence(student_logits: Array, teacher_topk_logprobs: Array,
                          teacher_topk_ids: Array, *, beta: float = 0.5) -> Array:
  """Generalized JSD per position `[batch, length]` against a teacher's top-k
  log-probabilities `[batch, length, k]` of tokens `teacher_topk_ids` (ids in the
  student's vocabulary; slots at -inf are empty), over the k tokens and a rest
  bucket."""
  beta = _check_beta(beta)
  if teacher_topk_logprobs.shape != teacher_topk_ids.shape:
    raise ValueError(f"top-k log-probs {teacher_topk_logprobs.shape} and ids "
                     f"{teacher_topk_ids.shape} differ")
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32), -1)
  student_k = jnp.take_along_axis(log_student, teacher_topk_ids, axis=-1)
  teacher = jax.lax.stop_gradient(teacher_topk_logprobs.astype(jnp.float32))
  # Empty slots (log-prob -inf: a position with fewer than k tokens) hold no mass
  # on either side; a large finite negative keeps every gradient finite.
  valid = jnp.isfinite(teacher)
  teacher = jnp.where(valid, teacher, _EMPTY)
  student_k = jnp.where(valid, student_k, _EMPTY)
  return _generalized_jsd(_with_rest(student_k), _with_rest(teacher), beta)


def masked_sum(divergence: Array, weights: Array) -> tuple[Array, Array]:
  """(sum of `divergence * weights`, sum of `weights`): a loss sum over the
  covered positions and its token count."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(divergence * weights), jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """How a student learns from a teacher's distribution (gin:
  `distillation.DistillSettings`; the teacher is `TEACHER_CHECKPOINT_PATH`).

  `beta` is the generalized JSD's (0: forward KL, 1: reverse KL, TRL's
  convention); TRL's GKD defaults are beta 0.5, temperature 0.9, lmbda 0.5.
  `on_policy_fraction` 0 is offline logit distillation on the records' targets,
  1 fully on-policy distillation.
  """

  beta: float = 0.5
  temperature: float = 1.0
  on_policy_fraction: float = 0.0
  sample_temperature: float = 1.0
  supervised_weight: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.beta <= 1.0:
      raise errors.UserError(f"DistillSettings.beta={self.beta}: must be in [0, 1] "
                             "(0: forward KL, 1: reverse KL)")
    if self.temperature <= 0 or self.sample_temperature <= 0:
      raise errors.UserError(
          f"DistillSettings: temperature={self.temperature} and sample_temperature="
          f"{self.sample_temperature} must be positive")
    if not 0.0 <= self.on_policy_fraction <= 1.0:
      raise errors.UserError(f"DistillSettings.on_policy_fraction="
                             f"{self.on_policy_fraction}: must be in [0, 1]")
    if self.supervised_weight < 0:
      raise errors.UserError(f"DistillSettings.supervised_weight={self.supervised_weight} "
                             "must be >= 0")


def on_policy_at(step: int, fraction: float, seed: int) -> bool:
  """Whether step `step` samples on-policy: a draw per step (TRL's `random() <=
  lmbda`) from (seed, step) alone, the same on every host and every resume."""
  if fraction >= 1.0:
    return True
  if fraction <= 0.0:
    return False
  return bool(np.random.default_rng([int(seed), int(step), 0x6B44]).random() < fraction)


@dataclasses.dataclass(frozen=True)
class DistillationObjective:
  """The student's generalized JSD to a teacher's distribution over completion
  tokens (see the module docstring), as loss sums for the trainer's step.

  The trainer passes the step's `aux`: `{"teacher": teacher parameters (on the
  mesh), "on_policy": bool}` from `step_aux(step)`.
  """

  model: BaseModel  # the student
  teacher: Optional[BaseModel]  # None: the batch's stored top-k (`teacher.logprobs`)
  vocab_rows: int
  settings: DistillSettings = DistillSettings()
  seed: int = 0
  z_loss: float = 0.0
  loss_normalizing_factor: Any = objectives.NUM_REAL_TARGET_TOKENS

  def __post_init__(self):
    if self.teacher is None and (self.settings.on_policy_fraction or
                                 self.settings.temperature != 1.0):
      raise errors.UserError(
          f"DistillSettings(on_policy_fraction={self.settings.on_policy_fraction}, "
          f"temperature={self.settings.temperature}): a teacher known by its stored top-k "
          "log-probs cannot score the student's samples or be re-tempered; on-policy "
          "distillation and temperatures need a teacher model (TEACHER_CHECKPOINT_PATH)")
    for name, m in (("student", self.model), ("teacher", self.teacher)):
      if m is not None and m.vocab_size < self.vocab_rows:
        raise errors.UserError(f"the {name} has {m.vocab_size} embedding rows, fewer than "
                               f"the tokenizer's {self.vocab_rows} ids")

  # ------------------------------------------------------------ the trainer's hooks

  def step_aux(self, step: int) -> dict[str, Any]:
    """Host-side inputs of step `step` beside the teacher's parameters."""
    return {"on_policy": np.bool_(on_policy_at(step, self.settings.on_policy_fraction,
                                               self.seed))}

  def prepare_batch(self, params: Any, batch: Batch, rng: Array,
                    aux: Mapping[str, Any]) -> Batch:
    """On an on-policy step, the batch with the student's own sampled
    completions of its prompts as targets (no gradient through sampling)."""
    if self.settings.on_policy_fraction == 0.0:
      return batch
    if "decoder_segment_ids" in batch:
      raise errors.UserError("on-policy distillation samples one completion per prompt: "
                             "packed batches (PACK=True) are not supported")
    length = batch["decoder_target_tokens"].shape[1]

    def sampled(batch):
      result = self.model.decode(jax.lax.stop_gradient(params),
                                 batch["encoder_input_tokens"], max_length=length,
                                 rng=rng, temperature=self.settings.sample_temperature,
                                 vocab_rows=self.vocab_rows)
      tokens = result.tokens.astype(batch["decoder_target_tokens"].dtype)
      out = dict(batch, decoder_target_tokens=tokens,
                 decoder_input_tokens=step_lib.shift_right(tokens))
      if "decoder_loss_weights" in batch:
        out["decoder_loss_weights"] = (tokens > 0).astype(batch["decoder_loss_weights"].dtype)
      return out

    batch = dict(batch)
    if "decoder_input_tokens" not in batch:
      batch["decoder_input_tokens"] = step_lib.shift_right(batch["decoder_target_tokens"])
    return jax.lax.cond(aux["on_policy"], sampled, lambda b: b, batch)

  def loss_sums(self, params: Any, batch: Batch, dropout_rng: Optional[Array] = None,
                aux: Optional[Mapping[str, Any]] = None) -> tuple[Array, dict[str, Array]]:
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
    logits = self.model.logits(params, batch, dropout_rng=dropout_rng)
    rows = self.vocab_rows
    if self.teacher is None:
      missing = [n for n in arrays.TEACHER_TOPK_FEATURES if n not in batch]
      if missing:
        raise errors.UserError(f"offline top-k distillation: the batch has no {missing} "
                               "(attach the teacher's log-probs: TEACHER_TOPK_CACHES)")
      ids, logprobs, covered = (batch[n] for n in arrays.TEACHER_TOPK_FEATURES)
      divergence, _ = masked_sum(
          topk_token_divergence(logits[..., :rows], logprobs, ids, beta=self.settings.beta),
          weights * covered)
    else:
      if aux is None or "teacher" not in aux:
        raise errors.UserError("DistillationObjective needs the teacher's parameters (aux)")
      teacher_logits = jax.lax.stop_gradient(self.teacher.logits(aux["teacher"], batch))
      divergence, _ = masked_sum(
          token_divergence(logits[..., :rows], teacher_logits[..., :rows],
                           beta=self.settings.beta, temperature=self.settings.temperature),
          weights)
    aux = aux or {}
    ce, z, weight_sum, correct = losses.compute_weighted_cross_entropy_and_hits(
        logits, targets, weights, z_loss=self.z_loss)
    off_policy = 1.0 - jnp.asarray(aux.get("on_policy", False), jnp.float32)
    supervised = self.settings.supervised_weight * off_policy * (ce - z)
    loss = divergence + supervised + z
    positions = batch.get("decoder_positions")
    starts = (jnp.arange(targets.shape[1])[None, :] == 0 if positions is None
              else positions == 0)
    return loss, {"loss": loss, "divergence": divergence, "cross_entropy": ce - z,
                  "z_loss": z, "weight_sum": weight_sum, "correct": correct,
                  "num_examples": jnp.sum(weights * starts),
                  "total_tokens": jnp.asarray(targets.size, jnp.float32),
                  "on_policy": 1.0 - off_policy}  # (summed over microbatches)

  def normalizer(self, sums: dict[str, Array]) -> Array:
    return objectives.TokenCrossEntropy(
        self.model, loss_normalizing_factor=self.loss_normalizing_factor).normalizer(sums)

  def metrics(self, sums: dict[str, Array]) -> dict[str, Array]:
    denom = self.normalizer(sums)
    tokens = jnp.maximum(sums["weight_sum"], 1.0)
    return {"loss": sums["loss"] / denom, "divergence": sums["divergence"] / denom,
            "cross_entropy": sums["cross_entropy"] / tokens, "z_loss": sums["z_loss"] / denom,
            "accuracy": sums["correct"] / tokens, "target_tokens": sums["weight_sum"],
            "examples": sums["num_examples"],
            "on_policy": jnp.minimum(sums["on_policy"], 1.0)}

  # ------------------------------------------------------------------ compute

  def extra_step_flops(self, shapes: Mapping[str, Sequence[int]],
                       aux: Mapping[str, Any]) -> int:
    """FLOPs a step spends beyond the student's training step: the teacher's
    forward pass, and on an on-policy step the student's sampling (prompt read
    and every target position decoded, the loop's upper bound)."""
    if self.teacher is None:
      return 0  # The server's forward passes are not this run's.
    batch, input_length = shapes["encoder_input_tokens"][:2]
    target_length = shapes["decoder_target_tokens"][1]
    flops = self.teacher.forward_flops(batch, input_length, target_length)
    if bool(aux.get("on_policy", False)):
      flops += batch * (self.model.encode_flops(input_length) +
                        self.model.decode_steps_flops(input_length, target_length))
    return int(flops)
