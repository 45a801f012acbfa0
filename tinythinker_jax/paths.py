"""Run paths on a local disk or an object store (`gs://`, `s3://`), through `etils.epath`.

Every folder and file a run writes or reads back (checkpoints, manifests,
shards, records, metrics, vocabularies, reports, materialised arrays) is an
`epath.Path`, as orbax and t5x use them, so `gs://bucket/run` works wherever
`/tmp/run` does. This module holds the few things pathlib does not say:

- `absolute` is `os.path.abspath` for local paths and leaves URIs alone
  (`abspath('gs://b/run')` would give `<cwd>/gs:/b/run`).
- `write_text`/`write_bytes`/`write_json` write all or nothing. On a local
  disk: a temporary file, fsynced, then renamed over the target. An object
  store publishes an object only when its upload completes, so there the
  target is written directly (a rename there is a copy plus a delete, and
  not atomic anyway).
- `AppendLog` appends lines (metrics, the teacher's completion cache). Objects
  cannot be appended to, so on an object store the log keeps its lines and
  rewrites the whole object at most every `min_interval_s` and on close.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
import time
from typing import Any, Iterable, Iterator, Optional, Union

from etils import epath

from tinythinker_jax import errors

PathLike = Union[str, os.PathLike]


def as_path(path: PathLike) -> epath.Path:
  return epath.Path(path)


def is_remote(path: PathLike) -> bool:
  """Whether `path` names an object store (a URI such as `gs://bucket/run`)."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
  """The absolute form of a local path; a URI as given."""
  path = as_path(path)
  return path if is_remote(path) else path.absolute()


def absolute_str(path: PathLike) -> str:
  """`absolute` as a string (for JSON metadata); '' stays ''."""
  return os.fspath(absolute(path)) if os.fspath(path) else ""


def write_bytes(path: PathLike, data: bytes) -> None:
  """The whole content or the previous file (see the module docstring)."""
  path = as_path(path)
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.parent / (path.name + ".tmp")
  with tmp.open("wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any, indent: Optional[int] = 2) -> None:
  write_text(path, json.dumps(value, indent=indent))


def read_json(path: PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def _jsonable(record: Any) -> Any:
  return record.to_json() if hasattr(record, "to_json") else record


def write_jsonl(path: PathLike, records: Iterable[Any]) -> None:
  """One JSON object per line (dicts, or records with `to_json()`), all or none
  (`write_bytes`): the one JSONL writer of every run file."""
  write_text(path, "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n"
                           for r in records))


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, dict]]:
  """`(line number, object)` for every non-blank line: the one JSONL reader of
  every run and dataset file. A missing file is a `MissingFileError`; a line that
  is not a JSON object is a `DataError` naming the file and line."""
  try:
    f = as_path(path).open("r")  # a local file or an object (gs://)
  except FileNotFoundError:
    raise errors.MissingFileError(f"{path}: not found") from None
  with f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.DataError(f"{path}:{line_no}: invalid JSON: {e.msg}") from e
      if not isinstance(record, dict):
        raise errors.DataError(f"{path}:{line_no}: expected a JSON object")
      yield line_no, record


def read_jsonl(path: PathLike) -> list[dict]:
  """Every object of a JSONL file, in order (`iter_jsonl`)."""
  return [record for _, record in iter_jsonl(path)]


def remove(path: PathLike) -> None:
  """Deletes a file or a folder tree if it is there."""
  path = as_path(path)
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()


@functools.lru_cache(maxsize=None)
def _local_copy(uri: str) -> str:
  folder = tempfile.mkdtemp(prefix="tinythinker_")
  local = os.path.join(folder, as_path(uri).name)
  with open(local, "wb") as f:
    f.write(as_path(uri).read_bytes())
  return local


def local_copy(path: PathLike) -> str:
  """A local file with `path`'s content, for libraries that open paths themselves.

  A local path is returned as it is; an object is downloaded once per process
  into a temporary folder (seqio's SentencePiece loader reads files only
  through TensorFlow's gfile, which cannot be pointed at other stores).
  """
  if not is_remote(path):
    return os.fspath(path)
  if not as_path(path).exists():
    raise FileNotFoundError(f"{path}: not found")
  return _local_copy(os.fspath(path))


def save_npy(path: PathLike, array) -> None:
  """`np.save` to any path (not atomic: `arrays.write_features` makes the folder so)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if not is_remote(path):
    np.save(os.fspath(path), array)
    return
  buffer = io.BytesIO()
  np.save(buffer, array)
  as_path(path).write_bytes(buffer.getvalue())


def load_npy(path: PathLike, mmap: bool = True):
  """A `.npy` array: memory-mapped on a local disk, read into memory from a store."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if mmap and not is_remote(path):
    return np.load(os.fspath(path), mmap_mode="r")
  return np.load(io.BytesIO(as_path(path).read_bytes()))


class AppendLog:
  """An append-only file (text lines or records) on a local disk or a store.

  Locally each write is flushed, and fsynced when `sync` (per write, default
  `fsync_writes`) says so. On a store the log keeps everything and rewrites the
  object when `min_interval_s` has passed since the last rewrite, and on
  `flush`/`close`.
  """

  def __init__(self, path: PathLike, min_interval_s: float = 10.0,
               fsync_writes: bool = True):
    self.path = as_path(path)
    self.remote = is_remote(self.path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._min_interval_s = min_interval_s
    self._fsync_writes = fsync_writes
    self._closed = False
    if self.remote:
      self._chunks = [self.path.read_bytes()] if self.path.exists() else []
      self._dirty = False
      self._flushed_at = time.monotonic()
    else:
      self._file = self.path.open("ab")

  def write(self, data: Union[str, bytes], *, sync: Optional[bool] = None) -> None:
    """Appends `data`; `sync` fsyncs a local file (a store follows its interval)."""
    if isinstance(data, str):
      data = data.encode("utf-8")
    if self.remote:
      self._chunks.append(data)
      self._dirty = True
      if time.monotonic() - self._flushed_at >= self._min_interval_s:
        self.flush()
      return
    self._file.write(data)
    self._file.flush()
    if self._fsync_writes if sync is None else sync:
      os.fsync(self._file.fileno())

  def flush(self) -> None:
    """Makes everything written so far durable (a store: one rewrite if needed)."""
    if self.remote:
      if self._dirty:
        data = b"".join(self._chunks)
        self._chunks = [data]
        self.path.write_bytes(data)
        self._dirty = False
      self._flushed_at = time.monotonic()
    else:
      self._file.flush()
      os.fsync(self._file.fileno())

  @property
  def closed(self) -> bool:
    return self._closed

  def close(self) -> None:
    if self._closed:
      return
    self.flush()
    self._closed = True
    if not self.remote:
      self._file.close()
