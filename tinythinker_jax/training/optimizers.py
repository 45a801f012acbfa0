"""Optimizers and learning-rate schedules with t5x's conventions."""

from __future__ import annotations

import optax
import jax.numpy as jnp

from tinythinker_jax import errors

SCHEDULES = ("constant", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")


def make_schedule(name: str = "rsqrt", *, learning_rate: float = 1.0,
                  warmup_steps: int = 10_000, total_steps: int = 0,
                  end_value: float = 0.0) -> optax.Schedule:
  """`constant` (linear warm-up when warmup_steps > 0); `rsqrt`, t5x's default:
  `learning_rate / sqrt(max(step, warmup_steps))`; `cosine` with linear warm-up."""
  if name == "constant":
    if warmup_steps <= 0:
      return optax.constant_schedule(learning_rate)
    return lambda step: learning_rate * jnp.minimum(1.0, (step + 1) / warmup_steps)
  if name == "rsqrt":
    return lambda step: learning_rate * jax_rsqrt(jnp.maximum(step, max(warmup_steps, 1)))
  if name == "cosine":
    if total_steps <= warmup_steps:
      raise errors.UserError(f"cosine schedule: total_steps={total_steps} must exceed "
                       f"warmup_steps={warmup_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                              total_steps, end_value)
  raise errors.UserError(f"schedule {name!r}: expected one of {SCHEDULES}")


def jax_rsqrt(x):
  return 1.0 / jnp.sqrt(jnp.asarray(x, jnp.float32))


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """`adafactor` with t5x's defaults (factored second moments, decay 0.8, update
  clipping 1.0, parameter-scaled updates, no momentum) or `adamw`."""
  if name == "adafactor":
    optimizer = optax.adafactor(learning_rate=schedule, decay_rate=0.8,
                                multiply_by_parameter_scale=True, clipping_threshold=1.0,
                                momentum=None, factored=True, min_dim_size_to_factor=128,
                                eps=1e-30,
                                weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    optimizer = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise errors.UserError(f"optimizer {name!r}: expected one of {OPTIMIZERS}")
  if grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
  return optimizer
