"""Orbax checkpoints: save every N steps and at the end, keep K, resume, reshard.

Each checkpoint holds the train state (step, params, optimizer state) and a
JSON `meta` item (the data seed and position, the model config, the operative
gin config). Restoring takes an abstract target whose leaves carry the
shardings of the *current* mesh, so a checkpoint written on one mesh shape
restores onto another.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from tinythinker_jax import errors


class Checkpointer:
  """A thin wrapper over `orbax.checkpoint.CheckpointManager`."""

  def __init__(self, directory: str, *, save_every: int = 1000, keep: Optional[int] = 3,
               asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(save_every, 1), max_to_keep=keep, create=True,
        enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_params(self, step: Optional[int] = None) -> Any:
    """The parameters of a checkpoint as host arrays, whatever mesh wrote them."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.MissingFileError(f"{self.directory}: no checkpoints")
    path = os.path.join(self.directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
    return jax.device_get(restored["params"])

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
