"""Metrics to JSONL and TensorBoard event files (no TensorFlow needed)."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax


class MetricWriter:
  """Appends `{step, name: value}` lines and TensorBoard scalars; process 0 only."""

  def __init__(self, directory: str, filename: str = "metrics.jsonl"):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(directory, filename)
    self._events = None
    if self.enabled:
      os.makedirs(directory, exist_ok=True)
      self._file = open(self.path, "a", encoding="utf-8")
      try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=import-outside-toplevel
        self._events = EventFileWriter(os.path.join(directory, "tensorboard"))
      except ImportError:  # TensorBoard is optional.
        self._events = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._events is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in metrics.items()]
      self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary_pb2.Summary(value=values)))
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._events is not None:
        self._events.close()
