"""Optimizers and learning-rate schedules with t5x's conventions."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from tinythinker_jax import errors
from tinythinker_jax.training import adafactor

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


def param_logical_axes(boxed_params: Any) -> Any:
  """The parameters' logical axis names, a tree of tuples (one name or None per
  dimension) like the parameters, from their `nn.LogicallyPartitioned` boxes."""
  specs = nn.get_partition_spec(boxed_params)
  return jax.tree.map(
      lambda spec, p: tuple(spec) + (None,) * (len(p.shape) - len(spec)), specs,
      nn.unbox(boxed_params), is_leaf=lambda x: isinstance(x, PartitionSpec))


def state_logical_axes(opt_state: Any, param_axes: Any, params: Any) -> Any:
  """Every optimizer-state leaf's logical axes (`PartitionSpec` of axis names;
  `PartitionSpec()` replicates), derived from the parameters' through the
  state's own structure (t5x's `derive_logical_axes`):

  - a subtree shaped like the parameters (Adam's `mu`/`nu`) takes their axes;
  - Adafactor's state derives its factored statistics' axes from its plan
    (`adafactor.state_logical_axes`);
  - scalars (counts, steps) are replicated.

  Any other leaf is an error naming it: its layout would otherwise be a guess.
  """
  params_def = jax.tree.structure(params)
  param_specs = jax.tree.map(lambda axes: PartitionSpec(*axes), param_axes,
                             is_leaf=lambda x: isinstance(x, tuple))

  def derive(node, where):
    if isinstance(node, adafactor.AdafactorState):
      return adafactor.state_logical_axes(node, param_axes, params)
    if (jax.tree.structure(node) == params_def and
        all(a.shape == b.shape for a, b in zip(jax.tree.leaves(node),
                                               jax.tree.leaves(params)))):
      return param_specs
    if node is None:
      return None
    if hasattr(node, "shape"):
      if len(node.shape) == 0:
        return PartitionSpec()
      raise errors.UserError(f"optimizer state {where}: shape {tuple(node.shape)} is "
                             "neither a scalar nor shaped like the parameters; its "
                             "sharding cannot be derived")
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*(derive(v, f"{where}.{f}") for f, v in zip(node._fields, node)))
    if isinstance(node, (tuple, list)):
      return type(node)(derive(v, f"{where}[{i}]") for i, v in enumerate(node))
    if isinstance(node, Mapping):
      return {k: derive(v, f"{where}/{k}") for k, v in node.items()}
    raise errors.UserError(f"optimizer state {where}: {type(node).__name__} is not a "
                           "state this trainer can derive shardings for")
  return derive(opt_state, "opt_state")


def train_state_logical_axes(abstract_state: Any, boxed_params: Any) -> Any:
  """A `step.TrainState` of logical `PartitionSpec`s: the step replicated, the
  parameters by their boxes, the optimizer state derived from them
  (`state_logical_axes`); `Partitioner.logical_shardings` places it."""
  from tinythinker_jax.training import step  # pylint: disable=import-outside-toplevel
  param_axes = param_logical_axes(boxed_params)
  return step.TrainState(
      step=PartitionSpec(),
      params=jax.tree.map(lambda axes: PartitionSpec(*axes), param_axes,
                          is_leaf=lambda x: isinstance(x, tuple)),
      opt_state=state_logical_axes(abstract_state.opt_state, param_axes,
                                   nn.unbox(boxed_params)))


def make_optimizer(name: str, schedule: optax.Schedule, *, param_axes: Any = None,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """`adafactor`, t5x's (`training.adafactor`: second moments factored by the
  parameters' logical axes, `param_axes`; decay 0.8, update clipping 1.0,
  parameter-scaled updates, no momentum; a scanned stack's `layers` axis a batch
  dimension), or `adamw`."""
  if name == "adafactor":
    if param_axes is None:
      raise errors.UserError("adafactor needs the parameters' logical axes (param_axes)")
    optimizer = adafactor.adafactor(schedule, param_axes,
                                    weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    optimizer = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise errors.UserError(f"optimizer {name!r}: expected one of {OPTIMIZERS}")
  if grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
  return optimizer
