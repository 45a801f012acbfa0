"""`tinythinker reflect`: TinyThinker's iterated self-reflection (or its
rejection-sampling baseline) (`stages.reflect.run_reflect`, `runs/reflect.gin`)."""

from __future__ import annotations

from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.reflect import run_reflect

def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker reflect", lambda parser: None,
      gin_utils.configured_binary(run_reflect, "runs/reflect.gin", "OUTPUT_DIR"), argv,
      "iterated self-reflection: k rounds of sample -> DPO/RPO -> validate, keeping "
      "the best")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
