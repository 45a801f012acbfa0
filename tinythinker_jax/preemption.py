"""Preemption: on SIGTERM, long loops stop at their next boundary, save, and exit.

TPU VMs (and most schedulers: Kubernetes, Slurm, spot GPU instances) send
SIGTERM some time before they take a machine away. Inside `guard()` a SIGTERM
does not kill the process; it sets a flag that the loop reads at its next
boundary (a training step, a finished shard). The loop saves there and raises
`Preempted`; the binaries print where the work stopped and exit with status
143 (128 + SIGTERM), and running the same command again resumes exactly.
Outside `guard()` SIGTERM keeps its default meaning.

With several processes, a training step is a collective, so every process
must stop at the same step: there the trainer asks JAX's preemption sync
point (`multihost_utils.reached_preemption_sync_point`, as t5x does), which
`jax.distributed.initialize` arms for SIGTERM; no Python handler is installed,
so that JAX's own notifier receives the signal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM

_requested = threading.Event()


class Preempted(Exception):
  """A loop stopped early on SIGTERM after saving its progress."""

  def __init__(self, what: str):
    super().__init__(f"preempted (SIGTERM): {what}; run the same command again to resume")


def requested() -> bool:
  """Whether SIGTERM arrived inside a `guard()` (single process)."""
  return _requested.is_set()


def _multiprocess() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_count() > 1


def reached_sync_point(step: int) -> bool:
  """Whether to stop after `step`: every process agrees on the same step."""
  if _multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(multihost_utils.reached_preemption_sync_point(step))
  return requested()


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
  """Within this block SIGTERM sets the flag instead of killing the process.

  The loop inside checks `reached_sync_point`/`requested` at its boundaries.
  If the signal came too late for the loop to see it (its work was done),
  leaving the block raises `Preempted` all the same, so the process stops
  instead of going on to its next stage. Nested guards share one handler.
  Only the main thread can install signal handlers; elsewhere (and with
  several processes, see the module docstring) the block runs unchanged.
  """
  if _multiprocess() or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.getsignal(signal.SIGTERM)
  if getattr(previous, "_tinythinker_guard", False):
    yield  # An outer guard already handles it.
    return

  def handler(signum, frame):
    del signum, frame
    if not _requested.is_set():
      log.warning("SIGTERM: stopping at the next step or shard boundary, after saving")
    _requested.set()
  handler._tinythinker_guard = True  # type: ignore[attr-defined]
  _requested.clear()
  signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
  if _requested.is_set():
    raise Preempted(f"{what} finished first")
