"""Adafactor as t5x runs it: second moments factored by the parameters' logical axes.

An optax `GradientTransformation` with t5x's Adafactor semantics (decay rate
`1 - (t + 1)^-0.8`, update clipping at RMS 1.0, updates scaled by the
parameter's RMS floored at 1e-3, no momentum) and its factorization rules:
each logical axis is a ROW, COLUMN, BATCH or unfactored (NONE) dimension
(`FACTOR_RULES`: `embed` rows; `vocab`, `mlp`, `heads`, `kv`, `joined_kv`
columns; `layers`, a scanned stack's, a batch dimension that statistics,
clipping and scale are kept apart over). A parameter of rank 3 or more (less
its batch dimensions) is factored by its rules, so T5's 3-D attention kernels
`(embed, heads, kv)` keep a row statistic over `embed` and a column one over
`heads x kv` instead of a full second moment; one with a ROW but no COLUMN
(or the other way) is not factored. A matrix uses Adafactor's heuristic, as
t5x does: the two largest dimensions, when the smaller reaches
`min_dim_size_to_factor`. One deviation: a scanned stack's matrices (batch
`layers` plus two) use the heuristic per layer too, where t5x factors them by
their rules whatever their size, so a scanned model trains exactly as the
same model unscanned.

The state mirrors the parameters (`v_row`, `v_col`, `v` trees, unused ones a
`(1,)` placeholder), and `state_logical_axes` derives every statistic's
logical axes from its parameter's with the same plan, so the train state is
sharded by the rules, never by guessing from shapes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from tinythinker_jax import errors


class FactorDim(enum.Enum):
  NONE = "none"
  BATCH = "batch"
  ROW = "row"
  COLUMN = "column"


FACTOR_RULES: Mapping[str, FactorDim] = {
    "vocab": FactorDim.COLUMN, "embed": FactorDim.ROW, "mlp": FactorDim.COLUMN,
    "heads": FactorDim.COLUMN, "kv_heads": FactorDim.COLUMN, "kv": FactorDim.COLUMN,
    "joined_kv": FactorDim.COLUMN,
    "relpos_buckets": FactorDim.NONE, "layers": FactorDim.BATCH, "stack": FactorDim.BATCH,
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one parameter's statistics are kept."""

  averaging_dims: tuple[int, ...]  # every dimension but the batch ones
  row_dims: tuple[int, ...] = ()  # reduced in `v_col`
  col_dims: tuple[int, ...] = ()  # reduced in `v_row`

  @property
  def factored(self) -> bool:
    return bool(self.row_dims) and bool(self.col_dims)


def plan(axes: Sequence[Optional[str]], shape: Sequence[int], *,
         min_dim_size_to_factor: int = 128,
         rules: Mapping[str, FactorDim] = FACTOR_RULES, name: str = "") -> Plan:
  """The statistics' plan of a parameter with these logical axes and shape."""
  ndim = len(shape)
  axes = tuple(axes) + (None,) * (ndim - len(axes))
  dims = []
  for axis in axes:
    if axis is None:
      dims.append(FactorDim.NONE)
    elif axis not in rules:
      raise errors.UserError(f"Adafactor: parameter {name or '?'} has logical axis "
                             f"{axis!r}, which no factor rule names ({sorted(rules)})")
    else:
      dims.append(rules[axis])
  batch = tuple(i for i, d in enumerate(dims) if d is FactorDim.BATCH)
  averaging = tuple(i for i in range(ndim) if i not in batch)
  if len(averaging) <= 2:
    # A matrix (or vector), or one layer of a scanned stack of them: Adafactor's
    # heuristic over its own dimensions, so a scanned layer is kept exactly as
    # the same layer unscanned.
    if len(averaging) < 2:
      return Plan(averaging)
    sizes = [shape[i] for i in averaging]
    order = [averaging[i] for i in np.argsort(sizes)]
    if shape[order[-2]] < min_dim_size_to_factor:
      return Plan(averaging)
    return Plan(averaging, (int(order[-2]),), (int(order[-1]),))
  rows = tuple(i for i, d in enumerate(dims) if d is FactorDim.ROW)
  cols = tuple(i for i, d in enumerate(dims) if d is FactorDim.COLUMN)
  if rows and cols and any(d is FactorDim.NONE for d in dims):
    raise errors.UserError(f"Adafactor: parameter {name or '?'} (axes {axes}) mixes "
                           "factored and unfactored dimensions")
  if not (rows and cols):
    return Plan(averaging)
  return Plan(averaging, rows, cols)


def _drop(items: Sequence, dims: Sequence[int]) -> tuple:
  return tuple(x for i, x in enumerate(items) if i not in dims)


class AdafactorState(NamedTuple):
  count: jax.Array
  v_row: Any  # per parameter: the mean over its column dims, or a (1,) placeholder
  v_col: Any  # the mean over its row dims
  v: Any  # the full second moment of an unfactored parameter


def _plans(param_axes: Any, params: Any, **kwargs) -> Any:
  def one(path, axes, p):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return plan(axes, p.shape, name=name, **kwargs)
  return jax.tree_util.tree_map_with_path(one, param_axes, params,
                                          is_leaf=lambda x: isinstance(x, tuple))


def adafactor(learning_rate: optax.ScalarOrSchedule, param_axes: Any, *,
              decay_rate: float = 0.8, step_offset: int = 0,
              clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, epsilon1: float = 1e-30,
              epsilon2: float = 1e-3, weight_decay_rate: Optional[float] = None,
              min_dim_size_to_factor: int = 128,
              rules: Mapping[str, FactorDim] = FACTOR_RULES
              ) -> optax.GradientTransformation:
  """Adafactor (see the module docstring); `param_axes` is a tree like the
  parameters whose leaves are their logical axis names (tuples)."""
  plan_kwargs = dict(min_dim_size_to_factor=min_dim_size_to_factor, rules=rules)

  def init(params):
    plans = _plans(param_axes, params, **plan_kwargs)
    placeholder = jnp.zeros((1,), jnp.float32)

    def zeros(p, pl, kind):
      if kind == "v":
        return placeholder if pl.factored else jnp.zeros(p.shape, jnp.float32)
      if not pl.factored:
        return placeholder
      reduced = pl.col_dims if kind == "v_row" else pl.row_dims
      return jnp.zeros(_drop(p.shape, reduced), jnp.float32)
    leaves = {kind: jax.tree.map(lambda p, pl, kind=kind: zeros(p, pl, kind), params, plans)
              for kind in ("v_row", "v_col", "v")}
    return AdafactorState(jnp.zeros((), jnp.int32), **leaves)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("adafactor needs the parameters (for their scale)")
    plans = _plans(param_axes, params, **plan_kwargs)
    t = state.count.astype(jnp.float32) - step_offset + 1.0
    decay = 1.0 - t ** (-decay_rate)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def one(g, p, pl, v_row, v_col, v):
      g = g.astype(jnp.float32)
      sq = g * g + epsilon1
      if pl.factored:
        new_row = decay * v_row + (1.0 - decay) * jnp.mean(sq, axis=pl.col_dims)
        new_col = decay * v_col + (1.0 - decay) * jnp.mean(sq, axis=pl.row_dims)
        # The row dims' positions once the column dims are reduced.
        rows_in_row = tuple(d - sum(1 for c in pl.col_dims if c < d) for d in pl.row_dims)
        row_factor = (new_row / jnp.mean(new_row, axis=rows_in_row, keepdims=True)) ** -0.5
        y = (g * jnp.expand_dims(row_factor, pl.col_dims) *
             jnp.expand_dims(new_col ** -0.5, pl.row_dims))
        new_v = v
      else:
        new_v = decay * v + (1.0 - decay) * sq
        y = g * new_v ** -0.5
        new_row, new_col = v_row, v_col
      if clipping_threshold is not None:
        rms = jnp.sqrt(jnp.mean(y * y, axis=pl.averaging_dims, keepdims=True))
        y = y / jnp.maximum(1.0, rms / clipping_threshold)
      scale = lr
      if multiply_by_parameter_scale:
        p32 = p.astype(jnp.float32)
        scale = scale * jnp.maximum(
            jnp.sqrt(jnp.mean(p32 * p32, axis=pl.averaging_dims, keepdims=True)), epsilon2)
      step = -scale * y
      if weight_decay_rate:
        step = step - weight_decay_rate * p.astype(jnp.float32)
      return step.astype(p.dtype), new_row, new_col, new_v

    out = jax.tree.map(one, grads, params, plans, state.v_row, state.v_col, state.v,
                       is_leaf=lambda x: isinstance(x, Plan))
    treedef = jax.tree.structure(grads)
    flat = treedef.flatten_up_to(out)
    unflatten = lambda i: treedef.unflatten([leaf[i] for leaf in flat])  # noqa: E731
    return unflatten(0), AdafactorState(state.count + 1, unflatten(1), unflatten(2),
                                        unflatten(3))

  return optax.GradientTransformation(init, update)


def state_logical_axes(state: AdafactorState, param_axes: Any, params: Any,
                       min_dim_size_to_factor: int = 128,
                       rules: Mapping[str, FactorDim] = FACTOR_RULES) -> AdafactorState:
  """Each statistic's logical axes (`PartitionSpec`s of axis names), from its
  parameter's by the same plan as `init`; placeholders and the count get
  `PartitionSpec()` (replicated)."""
  plans = _plans(param_axes, params, min_dim_size_to_factor=min_dim_size_to_factor,
                 rules=rules)

  def axes_of(kind):
    def one(axes, pl):
      axes = tuple(axes)
      if kind == "v":
        return PartitionSpec() if pl.factored else PartitionSpec(*axes)
      if not pl.factored:
        return PartitionSpec()
      return PartitionSpec(*_drop(axes, pl.col_dims if kind == "v_row" else pl.row_dims))
    return jax.tree.map(one, param_axes, plans, is_leaf=lambda x: isinstance(x, tuple))
  return AdafactorState(PartitionSpec(), axes_of("v_row"), axes_of("v_col"), axes_of("v"))
