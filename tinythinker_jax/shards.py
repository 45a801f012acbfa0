"""Resumable, process-sharded work over a list of items, written as JSONL shards.

Items are cut into fixed-size shards; shard k goes to process `k % count`.
A finished shard is written atomically (temporary file, fsync, rename; one
object upload on a store, see `paths`), so a killed run restarts without
redoing any finished shard and never reads a half-written one; on SIGTERM the
shard in progress is finished first (`preemption`). A manifest pins the item
count and shard size: resuming with other settings is refused with the file
named, instead of mixing results.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional, Sequence, TypeVar

import tqdm

from tinythinker_jax import compute as compute_lib
from tinythinker_jax import errors, paths, preemption
from tinythinker_jax.paths import PathLike

T = TypeVar("T")
MANIFEST = "shards.json"


def _shard_path(directory: PathLike, name: str, index: int, total: int):
  return paths.as_path(directory) / f"{name}-{index:05d}-of-{total:05d}.jsonl"


def sync_processes(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _check_manifest(directory: PathLike, name: str, num_items: int, shard_size: int,
                    settings: dict[str, Any]) -> None:
  path = paths.as_path(directory) / MANIFEST
  wanted = {"name": name, "num_items": num_items, "shard_size": shard_size,
            "settings": settings}
  if path.exists():
    found = paths.read_json(path)
    if found != json.loads(json.dumps(wanted)):
      changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
      raise errors.UserError(f"{path}: this folder holds shards made with other settings "
                       f"({', '.join(changed)} differ); use a new output folder or "
                       "delete it")
    return
  paths.write_json(path, wanted)


def _compute_path(shard_path):
  return shard_path.parent / (shard_path.name[:-len(".jsonl")] + ".compute.json")


def run_sharded(items: Sequence[T], work: Callable[[Sequence[T], int], list[dict]], *,
                directory: PathLike, name: str, shard_size: int, process_index: int = 0,
                process_count: int = 1, settings: dict[str, Any] | None = None,
                progress: bool = True, barrier: Callable[[], None] | None = None,
                compute: Optional[Callable[[], compute_lib.Compute]] = None
                ) -> list[dict]:
  """Runs `work(shard_items, shard_index)` on this process's unfinished shards.

  Returns every shard's records in item order once all are written (after
  `barrier`, when several processes share the folder). With `compute` (the
  worker's running totals, e.g. `lambda: student.compute`), what each shard
  spent is written beside it (`compute_of` sums them), before the shard.
  """
  if shard_size < 1:
    raise errors.UserError(f"shard_size={shard_size} must be >= 1")
  paths.as_path(directory).mkdir(parents=True, exist_ok=True)
  total = max(1, -(-len(items) // shard_size))
  if process_index == 0:
    _check_manifest(directory, name, len(items), shard_size, settings or {})
  mine = [k for k in range(total) if k % process_count == process_index]
  todo = [k for k in mine if not _shard_path(directory, name, k, total).exists()]
  bar = tqdm.tqdm(total=len(mine), initial=len(mine) - len(todo), desc=name, unit="shard",
                  disable=not progress)
  # On SIGTERM the shard in progress is finished and written, then the run
  # stops (`preemption.Preempted`); running it again does only the rest.
  with preemption.guard(name):
    try:
      for written, k in enumerate(todo, 1):
        before = dataclasses.replace(compute()) if compute is not None else None
        records = work(items[k * shard_size:(k + 1) * shard_size], k)
        path = _shard_path(directory, name, k, total)
        if before is not None:
          spent = compute_lib.Compute(**{
              f.name: getattr(compute(), f.name) - getattr(before, f.name)
              for f in dataclasses.fields(before)})
          paths.write_json(_compute_path(path), spent.to_json())
        paths.write_jsonl(path, records)
        bar.update(1)
        if written < len(todo) and preemption.requested():
          raise preemption.Preempted(
              f"{name}: {len(mine) - len(todo) + written} of {len(mine)} shards written "
              f"in {directory}")
    finally:
      bar.close()
  if barrier is not None:
    barrier()
  out: list[dict] = []
  for k in range(total):
    path = _shard_path(directory, name, k, total)
    if not path.exists():
      raise errors.MissingFileError(f"{path}: shard {k} is missing (did another process fail?)")
    out.extend(paths.read_jsonl(path))
  return out


def compute_of(directory: PathLike, name: str) -> compute_lib.Compute:
  """What the finished shards of `name` in `directory` spent (`run_sharded(compute=)`)."""
  total = compute_lib.Compute()
  for path in sorted(paths.as_path(directory).glob(f"{name}-*-of-*.compute.json")):
    total = total + compute_lib.Compute.from_json(paths.read_json(path))
  return total
