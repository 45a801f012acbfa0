"""Orbax checkpoints: save every N steps and at the end, keep K, resume, reshard.

Each checkpoint holds the train state (step, params, optimizer state) and a
JSON `meta` item (the data seed and position, the model config, the operative
gin config). Restoring takes an abstract target whose leaves carry the
shardings of the *current* mesh, so a checkpoint written on one mesh shape
restores onto another.

A model dir holds `checkpoints/` (the train state, for resuming) and, when a
run selects by a validation metric, `best_checkpoint/` (the parameters of the
best evaluation so far) with `best.json` naming its step and value.
`locate(path)` says which parameters a path means:

| path | parameters |
|---|---|
| `<model_dir>` | the best checkpoint if the run marked one, else the latest |
| `<model_dir>/checkpoints` (or `best_checkpoint`) | the latest in that folder |
| `<model_dir>/checkpoints/<step>` | that step |

Paths may be local or on an object store (`gs://...`): they go through
`etils.epath` (`paths`), as orbax's own do, and are never made absolute with
`os.path` (which would turn `gs://b/run` into `<cwd>/gs:/b/run`). Opening a
checkpoint folder only to read it (`create=False`) creates nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from tinythinker_jax import errors, paths
from tinythinker_jax.paths import PathLike

CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best_checkpoint"
BEST_FILE = "best.json"


@dataclasses.dataclass(frozen=True)
class Location:
  directory: str  # a CheckpointManager folder
  step: Optional[int]  # None: its latest
  model_dir: str
  best: bool  # the run's marked best checkpoint


def read_best(model_dir: PathLike) -> Optional[dict]:
  """`<model_dir>/best.json` (step, metric, value, history), or None."""
  path = paths.as_path(model_dir) / BEST_FILE
  if not path.exists():
    return None
  return paths.read_json(path)


def write_best(model_dir: PathLike, best: dict) -> None:
  paths.write_json(paths.as_path(model_dir) / BEST_FILE, best, indent=1)


def locate(path: PathLike) -> Location:
  """Which checkpoint a model path means (see the module docstring); reads only."""
  path = paths.as_path(path)  # epath drops a trailing "/"
  base, parent = path.name, path.parent
  if base.isdigit() and parent.name in (CHECKPOINTS, BEST_CHECKPOINT):
    return Location(str(parent), int(base), str(parent.parent),
                    parent.name == BEST_CHECKPOINT)
  if base in (CHECKPOINTS, BEST_CHECKPOINT):
    return Location(str(path), None, str(parent), base == BEST_CHECKPOINT)
  best = read_best(path)
  if best is not None and (path / BEST_CHECKPOINT).is_dir():
    return Location(str(path / BEST_CHECKPOINT), int(best["step"]), str(path), True)
  return Location(str(path / CHECKPOINTS), None, str(path), False)


def check_params_fit(params: Any, abstract: Any, source: str) -> None:
  """Raises naming the first parameter whose presence or shape does not fit."""
  flat = {_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  expected = {_path_name(p): x for p, x in
              jax.tree_util.tree_flatten_with_path(abstract)[0]}
  for name, leaf in expected.items():
    if name not in flat:
      raise errors.UserError(f"{source}: parameter {name} (shape {tuple(leaf.shape)}) "
                             "is missing")
    if tuple(flat[name].shape) != tuple(leaf.shape):
      raise errors.UserError(f"{source}: parameter {name} has shape "
                             f"{tuple(flat[name].shape)}; the model config needs "
                             f"{tuple(leaf.shape)}")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise errors.UserError(f"{source}: parameter {extra[0]} is not in the model config")


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


class Checkpointer:
  """A thin wrapper over `orbax.checkpoint.CheckpointManager`."""

  def __init__(self, directory: PathLike, *, save_every: int = 1000,
               keep: Optional[int] = 3, asynchronous: bool = True, create: bool = True):
    """`create=False` for a folder that is only read: nothing is created."""
    self.directory = str(paths.absolute(directory))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(save_every, 1), max_to_keep=keep, create=create,
        enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_meta(self, step: Optional[int] = None) -> dict:
    """A checkpoint's JSON meta (model config, vocabulary, seed) without its arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.MissingFileError(f"{self.directory}: no checkpoints")
    path = paths.as_path(self.directory) / str(step) / "meta" / "metadata"
    if not path.exists():
      raise errors.MissingFileError(f"{self.directory}: no checkpoint at step {step}")
    return paths.read_json(path)

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_params(self, step: Optional[int] = None, shardings: Any = None,
                     abstract: Any = None, source: str = "") -> Any:
    """A checkpoint's parameters alone (its optimizer state is not read).

    With `shardings` (a tree of `jax.sharding.Sharding` shaped like the
    parameters) every array is restored straight into its shards on the mesh,
    whatever mesh wrote it: no device, and no host, holds a full copy of a
    sharded parameter. Without, they come back as host (numpy) arrays. With
    `abstract` (the model's parameter shapes) the stored shapes are checked
    against it first, and a misfit names the parameter (`source` in front).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.MissingFileError(f"{self.directory}: no checkpoints")
    path = paths.as_path(self.directory) / str(step) / "state"
    if not path.is_dir():
      raise errors.MissingFileError(f"{self.directory}: no checkpoint at step {step}")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    stored = tree["params"]
    if abstract is not None:
      check_params_fit(stored, abstract, source or f"{self.directory}/{step}")
    sharding_given = shardings is not None
    if shardings is None:
      host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
      shardings = jax.tree.map(lambda _: host, stored)
    target = {"params": jax.tree.map(
        lambda m, sharding: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        stored, shardings)}
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    params = restored["params"]
    if sharding_given:
      return params
    return jax.device_get(params)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
