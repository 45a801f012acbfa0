"""`pipeline.json`, the pipeline's manifest: finished stages with their outputs and
times, so that a run started again skips them."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from tinythinker_jax import errors, paths

MANIFEST = "pipeline.json"


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
