"""`pipeline.json`, the pipeline's manifest: finished stages with their outputs and
times, so that a run started again skips them."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from tinythinker_jax import errors, paths

MANIFEST = "pipeline.json"


def code_version() -> str:
  """The git commit of the code that runs (with '+changes' when the checkout has
  uncommitted changes), or the installed package's version outside a checkout."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("+changes" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    try:
      return "tinythinker_jax " + metadata.version("tinythinker_jax")
    except metadata.PackageNotFoundError:
      return "unknown"


def invocation() -> dict[str, Any]:
  import sys  # pylint: disable=import-outside-toplevel
  return {"argv": list(sys.argv), "code": code_version(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class Manifest:
  """`pipeline.json`: finished stages, written atomically after each one."""

  def __init__(self, run_dir: str, settings: dict[str, Any]):
    self.path = paths.as_path(run_dir) / MANIFEST
    self.data: dict[str, Any] = {"settings": settings, "stages": {}, "runs": 0}
    if self.path.exists():
      saved = paths.read_json(self.path)
      if saved.get("settings") != json.loads(json.dumps(settings)):
        changed = sorted(k for k in set(saved.get("settings", {})) | set(settings)
                         if saved.get("settings", {}).get(k) != json.loads(
                             json.dumps(settings.get(k))))
        raise errors.UserError(f"{self.path}: this run folder was made with other settings "
                         f"({', '.join(changed)}); use a new run folder")
      self.data = saved
    self.data["runs"] = self.data.get("runs", 0) + 1
    # How each run of the folder was started, so that its tables can be rebuilt.
    self.data.setdefault("invocations", []).append(invocation())
    self._write()

  def done(self, stage: str) -> bool:
    return stage in self.data["stages"]

  def finish(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
    self.data["stages"][stage] = {"outputs": outputs, "seconds": round(seconds, 1),
                                  "run": self.data["runs"]}
    self._write()

  def outputs(self, stage: str) -> dict[str, Any]:
    return self.data["stages"][stage]["outputs"]

  def _write(self) -> None:
    paths.write_json(self.path, self.data)


def run_stage(manifest: Manifest, name: str, fn: Callable[[], dict[str, Any]],
              log: Callable[[str], None]) -> dict[str, Any]:
  """Runs stage `name` unless the manifest has it, then records its outputs."""
  if manifest.done(name):
    log(f"[{name}] done before; skipped")
    return manifest.outputs(name)
  log(f"[{name}]")
  start = time.time()
  outputs = fn()
  manifest.finish(name, outputs, time.time() - start)
  return outputs
