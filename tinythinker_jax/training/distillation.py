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
away. A teacher's stored log-probabilities are at its sampling temperature; the
top-k form takes no other temperature.

Both return `[batch, length]` divergences; `masked_sum` adds them over the
positions a loss covers (completion tokens, padding weighted 0), so that the
trainer's normaliser (t5x's NUM_REAL_TARGET_TOKENS) averages them over tokens.
Pure functions of arrays: jittable, differentiable in the student's logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_TINY = 1e-30


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
  student's vocabulary), over the k tokens and a rest bucket."""
  beta = _check_beta(beta)
  if teacher_topk_logprobs.shape != teacher_topk_ids.shape:
    raise ValueError(f"top-k log-probs {teacher_topk_logprobs.shape} and ids "
                     f"{teacher_topk_ids.shape} differ")
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32), -1)
  student_k = jnp.take_along_axis(log_student, teacher_topk_ids, axis=-1)
  teacher = jax.lax.stop_gradient(teacher_topk_logprobs.astype(jnp.float32))
  return _generalized_jsd(_with_rest(student_k), _with_rest(teacher), beta)


def masked_sum(divergence: Array, weights: Array) -> tuple[Array, Array]:
  """(sum of `divergence * weights`, sum of `weights`): a loss sum over the
  covered positions and its token count."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(divergence * weights), jnp.sum(weights)
