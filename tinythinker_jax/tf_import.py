"""TensorFlow and seqio, imported without their start-up noise.

Importing TensorFlow (which seqio does) writes several lines straight to the
process's stderr, before any logging setting can apply: absl's notice that
"all log messages before absl::InitializeLog() is called are written to
STDERR", oneDNN's numerical-round-off notice, the CPU-feature guard's list of
instructions, and on a machine without an NVIDIA GPU "Could not find cuda
drivers" and "failed call to cuInit: ... UNKNOWN ERROR (303)" (an error that
is none). `import_seqio()` imports both with stderr passed through a filter
that drops exactly those lines; everything else TensorFlow says (its real
warnings and errors) is passed on. The CUDA lines are dropped only where no
NVIDIA device exists: on a GPU host they say something.

Only the seqio/TensorFlow paths use this (tasks, materialisation, vocabularies);
training and sampling never import TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator, Sequence

_ALWAYS = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written "
    r"to STDERR",
    r"^I\d{4} .*\] oneDNN custom operations are on",
    r"^I\d{4} .*cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* in other operations, rebuild "
    r"TensorFlow with the appropriate compiler flags\.",
)
_WITHOUT_GPU = (
    r"^I\d{4} .*cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"^E\d{4} .*cuda_platform\.cc:\d+\] failed call to cuInit",
    r"^E\d{4} .*cuda_executor\.cc:\d+\] failed call to cuInit",
)


def has_nvidia_device() -> bool:
  """Whether the machine exposes an NVIDIA GPU (its driver's device files)."""
  return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def noise_patterns() -> list[re.Pattern]:
  patterns = list(_ALWAYS) + ([] if has_nvidia_device() else list(_WITHOUT_GPU))
  return [re.compile(p) for p in patterns]


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[re.Pattern]) -> Iterator[None]:
  """File descriptor 2 through a filter that drops the lines matching `patterns`
  (C++ libraries write there directly, past Python's `sys.stderr`)."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real stderr (e.g. captured by a test runner)
    yield
    return
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward() -> None:
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        text = line.decode("utf-8", "replace")
        if not any(p.search(text) for p in patterns):
          os.write(saved, line)

  thread = threading.Thread(target=forward, daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
    thread.join(timeout=10)
    os.close(saved)


def import_seqio():
  """`(seqio, tensorflow)`, imported (and TensorFlow's devices listed, which is
  when it tries CUDA) without the start-up noise."""
  with filtered_stderr(noise_patterns()):
    import seqio  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.list_physical_devices()
  return seqio, tf
