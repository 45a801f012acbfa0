"""Layer stacks shared by the model families: rematerialisation, `nn.scan` over
layers, and the two parameter layouts that scanning implies.

A config with `remat_policy` ('none', 'full', 'minimal') and `scan_layers`
runs its layers through `layer_stack`. Unscanned, layer i is the submodule
`layers_{i}` (t5x's names); scanned, one submodule `layers` runs under
`nn.scan` with its parameters (and decode cache) stacked on a leading axis,
logically named `layers`. `stack_layers` / `unstack_layers` convert parameter
trees between the layouts (an HF folder is always unscanned; a checkpoint
records its own).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax import errors

Array = jax.Array
REMAT_POLICIES = ("none", "full", "minimal")


def remat(layer_cls, policy: str, static_argnums: tuple[int, ...], scanned: bool):
  """`layer_cls` under `nn.remat` as `policy` says ('full': save nothing,
  'minimal': save the matmuls without batch dimensions)."""
  if policy == "none":
    return layer_cls
  if policy not in REMAT_POLICIES:
    raise errors.UserError(f"remat_policy={policy!r}; expected one of {REMAT_POLICIES}")
  saveable = (None if policy == "full" else
              jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
  # Inside a scan XLA cannot hoist the recomputation out of the loop body, so
  # the CSE barrier is not needed there (t5x makes the same choice).
  return nn.remat(layer_cls, policy=saveable, static_argnums=static_argnums,
                  prevent_cse=not scanned)


def layer_stack(layer_cls, cfg: Any, num_layers: int, static_argnums: tuple[int, ...],
                *args, layer_args: tuple = ()) -> Array:
  """Runs `num_layers` layers `layer_cls(cfg, *layer_args)` on `args[0]`; the
  other args go to every layer (a scanned layer returns `(x, None)`).

  Called from a compact method: the layers become that module's submodules.
  """
  layer = remat(layer_cls, cfg.remat_policy, static_argnums, cfg.scan_layers)
  x, rest = args[0], args[1:]
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer(cfg, *layer_args, name=f"layers_{i}")(x, *rest)
    return x
  stack = nn.scan(layer, variable_axes={"params": 0, "cache": 0},
                  split_rngs={"params": True, "dropout": True},
                  in_axes=(nn.broadcast,) * len(rest), length=num_layers,
                  metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = stack(cfg, *layer_args, name="layers")(x, *rest)
  return x


def _stack(trees: list, where: str):
  """One tree whose leaves are the given trees' leaves stacked on axis 0."""
  try:
    return jax.tree.map(
        lambda *xs: (jnp.stack(xs) if any(isinstance(x, jax.Array) for x in xs)
                     else np.stack([np.asarray(x) for x in xs])), *trees)
  except ValueError as e:  # Different structures or shapes between layers.
    raise errors.UserError(f"params: the layers of {where} do not match: {e}") from e


# A stack: (path of the node holding the layers, '' for the top level; number of
# layers; the config field that sets it, for errors).
Stack = tuple[str, int, str]


def _node(params: Any, path: str) -> dict:
  return dict(params.get(path, {})) if path else dict(params)


def _put(out: dict, path: str, node: dict) -> dict:
  if path:
    out[path] = node
    return out
  return node


def stack_layers(params: Any, stacks: Sequence[Stack]) -> dict:
  """Unscanned parameters (`<stack>/layers_{i}/...`) -> scanned
  (`<stack>/layers/...`), each stacked leaf with the layers on its leading axis
  in layer order; everything else passed through (host arrays stay on the host)."""
  out = dict(params)
  for path, count, field in stacks:
    node = _node(out, path)
    names = [f"layers_{i}" for i in range(count)]
    missing = [n for n in names if n not in node]
    if missing:
      where = f"{path}/{missing[0]}" if path else missing[0]
      raise errors.UserError(f"params: {where} is missing ({field}={count}; is the tree "
                             "already scanned?)")
    node["layers"] = _stack([node.pop(n) for n in names], path or "the model")
    out = _put(out, path, node)
  return out


def unstack_layers(params: Any, stacks: Sequence[Stack]) -> dict:
  """Scanned parameters -> unscanned: the inverse of `stack_layers`."""
  out = dict(params)
  for path, count, field in stacks:
    node = _node(out, path)
    prefix = f"{path}/layers" if path else "layers"
    if "layers" not in node:
      raise errors.UserError(f"params: {prefix} is missing (is the tree already "
                             "unscanned?)")
    stacked = node.pop("layers")
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]:
      if not leaf.shape or leaf.shape[0] != count:
        name = "/".join(str(getattr(k, "key", k)) for k in key_path)
        raise errors.UserError(
            f"params: {prefix}/{name} has shape {tuple(leaf.shape)}; {field}={count} "
            f"needs {count} layers on its leading axis")
    for i in range(count):
      node[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    out = _put(out, path, node)
  return out


def convert_layout(params: Any, stacks: Sequence[Stack], scanned: bool) -> dict:
  """`params` in the layout `scanned` asks for, from either layout."""
  path = stacks[0][0]
  is_scanned = "layers" in _node(params, path)
  if is_scanned == scanned:
    return params
  return stack_layers(params, stacks) if scanned else unstack_layers(params, stacks)
