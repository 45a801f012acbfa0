"""An append-only completion cache: teacher answers already paid for are never lost.

One JSON record per line, keyed by a hash of the request's content and the
sample index; each record is flushed and fsynced as it is written, so a
`kill -9` loses at most the requests in flight. A torn last line (a crash in
the middle of a write) is detected on open, reported, and skipped; the next
record starts on a fresh line.

On an object store (`gs://`), which cannot append, the cache object is
rewritten at most every `min_interval_s` seconds and on close
(`paths.AppendLog`): a crash there loses at most that many seconds of answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Iterator, Optional

from tinythinker_jax import paths

log = logging.getLogger(__name__)


def request_key(content: dict[str, Any], sample_index: int) -> str:
  """sha256 of the canonical JSON of the request content plus the sample index."""
  canonical = json.dumps({"request": content, "sample_index": sample_index},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CompletionCache:
  """Maps request keys to completion records, backed by an append-only JSONL file."""

  def __init__(self, path: paths.PathLike, min_interval_s: float = 10.0):
    self.path = str(path)
    self.torn_lines = 0
    self._records: dict[str, dict[str, Any]] = {}
    needs_newline = self._load()
    self._file = paths.AppendLog(self.path, min_interval_s=min_interval_s)
    if needs_newline:
      self._file.write("\n")

  def _load(self) -> bool:
    """Reads existing records; returns whether the file ends without a newline."""
    if not paths.as_path(self.path).exists():
      return False
    data = paths.as_path(self.path).read_bytes()
    if not data:
      return False
    lines = data.split(b"\n")
    for line_no, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        key = record["key"]
      except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        self.torn_lines += 1
        log.warning("%s:%d: skipping a torn or malformed cache line (%d bytes)",
                    self.path, line_no, len(line))
        continue
      self._records[key] = record
    return not data.endswith(b"\n")

  def __len__(self) -> int:
    return len(self._records)

  def __contains__(self, key: str) -> bool:
    return key in self._records

  def get(self, key: str) -> Optional[dict[str, Any]]:
    return self._records.get(key)

  def records(self) -> Iterator[dict[str, Any]]:
    """Every record, in the order first written."""
    return iter(self._records.values())

  def put(self, key: str, request: dict[str, Any], sample_index: int,
          response: dict[str, Any]) -> dict[str, Any]:
    record = {"key": key, "sample_index": sample_index, "request": request,
              "response": response, "time": time.time()}
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self._records[key] = record
    return record

  def flush(self) -> None:
    """Makes every record written so far durable (an object store's rewrite)."""
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "CompletionCache":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
