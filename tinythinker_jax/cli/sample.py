"""`tinythinker sample`: self-reflection data from the student's own chains
(`stages.sample.run_sample`, configured by `runs/sample.gin`)."""

from __future__ import annotations

from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.sample import run_sample

def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker sample", lambda parser: None,
      gin_utils.configured_binary(run_sample, "runs/sample.gin", "OUTPUT_DIR"), argv,
      "self-reflection data: sample the student's chains, build preference pairs "
      "with reference log-probabilities")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
