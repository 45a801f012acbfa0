"""Optimizers and learning-rate schedules with t5x's conventions."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

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


LAYERS = "layers"  # the key (and logical axis) of a scanned stack's parameters


def _split_stacks(tree: Mapping, prefix: tuple = ()) -> tuple[dict, dict]:
  """({path: subtree under a `layers` key}, the tree without those subtrees)."""
  stacks, rest = {}, {}
  for key, value in tree.items():
    if key == LAYERS:
      stacks["/".join(prefix + (key,))] = value
    elif isinstance(value, Mapping):
      inner_stacks, rest[key] = _split_stacks(value, prefix + (key,))
      stacks.update(inner_stacks)
    else:
      rest[key] = value
  return stacks, rest


def _copy_dicts(tree: Mapping) -> dict:
  return {k: _copy_dicts(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _merge_stacks(stacks: Mapping, rest: Mapping) -> dict:
  """The inverse of `_split_stacks`."""
  out = _copy_dicts(rest)
  for path, subtree in stacks.items():
    *parents, last = path.split("/")
    node = out
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = subtree
  return out


def per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to each layer of a scanned stack separately (the subtrees
  under a `layers` key, layers on the leading axis), and to the rest as is.

  For optimizers whose statistics are per array (Adafactor's factoring, update
  clipping and parameter scale), this makes a scanned model's updates those of
  the unscanned model, as t5x's Adafactor does by treating the `layers` axis
  as a batch dimension (`FactorDim.BATCH`). Stacks of different depths
  (encoder, decoder) are mapped separately.
  """
  def init(params):
    stacks, rest = _split_stacks(params)
    return {"stacks": {k: jax.vmap(inner.init)(v) for k, v in stacks.items()},
            "rest": inner.init(rest)}

  def update(updates, state, params=None):
    stacks, rest = _split_stacks(updates)
    param_stacks, param_rest = (({k: None for k in stacks}, None) if params is None
                                else _split_stacks(params))
    new_stacks, new_states = {}, {}
    for k, v in stacks.items():
      new_stacks[k], new_states[k] = jax.vmap(inner.update)(v, state["stacks"][k],
                                                           param_stacks[k])
    rest, rest_state = inner.update(rest, state["rest"], param_rest)
    return _merge_stacks(new_stacks, rest), {"stacks": new_states, "rest": rest_state}

  return optax.GradientTransformation(init, update)


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip_norm: float | None = None,
                   scanned_layers: bool = False) -> optax.GradientTransformation:
  """`adafactor` with t5x's defaults (factored second moments, decay 0.8, update
  clipping 1.0, parameter-scaled updates, no momentum) or `adamw`.

  With `scanned_layers` (a `T5Config.scan_layers` model), Adafactor keeps its
  statistics per layer (`per_layer`); AdamW is elementwise and needs nothing.
  """
  if name == "adafactor":
    optimizer = optax.adafactor(learning_rate=schedule, decay_rate=0.8,
                                multiply_by_parameter_scale=True, clipping_threshold=1.0,
                                momentum=None, factored=True, min_dim_size_to_factor=128,
                                eps=1e-30,
                                weight_decay_rate=weight_decay or None)
    if scanned_layers:
      optimizer = per_layer(optimizer)
  elif name == "adamw":
    optimizer = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise errors.UserError(f"optimizer {name!r}: expected one of {OPTIMIZERS}")
  if grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
  return optimizer
