"""Resumable, process-sharded work over a list of items, written as JSONL shards.

Items are cut into fixed-size shards; shard k goes to process `k % count`.
A finished shard is written atomically (temporary file, fsync, rename), so a
killed run restarts without redoing any finished shard and never reads a
half-written one; on SIGTERM the shard in progress is finished first
(`preemption`). A manifest pins the item count and shard size: resuming
with other settings is refused with the file named, instead of mixing results.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence, TypeVar

import tqdm

from tinythinker_jax import errors, preemption

T = TypeVar("T")
MANIFEST = "shards.json"


def _shard_path(directory: str, name: str, index: int, total: int) -> str:
  return os.path.join(directory, f"{name}-{index:05d}-of-{total:05d}.jsonl")


def write_jsonl_atomically(path: str, records: Iterable[dict[str, Any]]) -> None:
  """All records or none: a temporary file, fsynced, then renamed."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_text_atomically(path: str, text: str) -> None:
  """The whole text or the previous file: a temporary file, fsynced, then renamed."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomically(path: str, value: Any) -> None:
  write_text_atomically(path, json.dumps(value, indent=2))


def sync_processes(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a JSONL file; a malformed line is an error naming file and line."""
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError:
    raise errors.MissingFileError(f"{path}: not found") from None
  records = []
  with f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise errors.UserError(f"{path}:{line_no}: not JSON ({e.msg})") from None
  return records


def _check_manifest(directory: str, name: str, num_items: int, shard_size: int,
                    settings: dict[str, Any]) -> None:
  path = os.path.join(directory, MANIFEST)
  wanted = {"name": name, "num_items": num_items, "shard_size": shard_size,
            "settings": settings}
  if os.path.exists(path):
    with open(path) as f:
      found = json.load(f)
    if found != json.loads(json.dumps(wanted)):
      changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
      raise errors.UserError(f"{path}: this folder holds shards made with other settings "
                       f"({', '.join(changed)} differ); use a new output folder or "
                       "delete it")
    return
  write_json_atomically(path, wanted)


def run_sharded(items: Sequence[T], work: Callable[[Sequence[T], int], list[dict]], *,
                directory: str, name: str, shard_size: int, process_index: int = 0,
                process_count: int = 1, settings: dict[str, Any] | None = None,
                progress: bool = True, barrier: Callable[[], None] | None = None
                ) -> list[dict]:
  """Runs `work(shard_items, shard_index)` on this process's unfinished shards.

  Returns every shard's records in item order once all are written (after
  `barrier`, when several processes share the folder).
  """
  if shard_size < 1:
    raise errors.UserError(f"shard_size={shard_size} must be >= 1")
  os.makedirs(directory, exist_ok=True)
  total = max(1, -(-len(items) // shard_size))
  if process_index == 0:
    _check_manifest(directory, name, len(items), shard_size, settings or {})
  mine = [k for k in range(total) if k % process_count == process_index]
  todo = [k for k in mine if not os.path.exists(_shard_path(directory, name, k, total))]
  bar = tqdm.tqdm(total=len(mine), initial=len(mine) - len(todo), desc=name, unit="shard",
                  disable=not progress)
  # On SIGTERM the shard in progress is finished and written, then the run
  # stops (`preemption.Preempted`); running it again does only the rest.
  with preemption.guard(name):
    try:
      for written, k in enumerate(todo, 1):
        records = work(items[k * shard_size:(k + 1) * shard_size], k)
        write_jsonl_atomically(_shard_path(directory, name, k, total), records)
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
    if not os.path.exists(path):
      raise errors.MissingFileError(f"{path}: shard {k} is missing (did another process fail?)")
    out.extend(read_jsonl(path))
  return out
