"""`tinythinker infer`: a student's reasoning chains over a dataset split
(`stages.infer.run_infer`, configured by `runs/infer.gin`)."""

from __future__ import annotations

from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.infer import run_infer

def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker infer", lambda parser: None,
      gin_utils.configured_binary(run_infer, "runs/infer.gin", "OUTPUT_DIR"), argv,
      "run a student's reasoning chains over a dataset split; write per-example records")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
