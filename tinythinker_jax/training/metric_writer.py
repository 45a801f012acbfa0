"""Metrics to JSONL and TensorBoard event files (no TensorFlow needed).

Both go to local folders or object stores through `paths.AppendLog` (on a
store, each object is rewritten at most every `min_interval_s` and on close).
The event file is named and framed as TensorBoard's `EventFileWriter` does
(`events.out.tfevents.<time>.<host>.<pid>`, TensorBoard's `RecordWriter`),
but written synchronously through `paths` rather than TensorFlow's gfile, so
it reaches the same stores as every other run file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Mapping

import jax

from tinythinker_jax import paths


class MetricWriter:
  """Appends `{step, name: value}` lines and TensorBoard scalars; process 0 only."""

  def __init__(self, directory: paths.PathLike, filename: str = "metrics.jsonl",
               min_interval_s: float = 10.0):
    self.enabled = jax.process_index() == 0
    self.path = paths.as_path(directory) / filename
    self._events = None
    if self.enabled:
      self._file = paths.AppendLog(self.path, min_interval_s=min_interval_s,
                                   fsync_writes=False)
      try:
        from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
        from tensorboard.summary.writer.record_writer import RecordWriter  # pylint: disable=import-outside-toplevel
      except ImportError:  # TensorBoard is optional.
        return
      name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
              f"{os.getpid()}")
      self._events = RecordWriter(paths.AppendLog(
          paths.as_path(directory) / "tensorboard" / name, min_interval_s=min_interval_s,
          fsync_writes=False))
      self._events.write(event_pb2.Event(
          wall_time=time.time(), file_version="brain.Event:2",
          source_metadata=event_pb2.SourceMetadata(writer=__name__)).SerializeToString())

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    if self._events is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in metrics.items()]
      self._events.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=summary_pb2.Summary(value=values)
                                         ).SerializeToString())

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._events is not None:
        self._events.close()
