"""`tinythinker evaluate`: greedy and self-consistency accuracy of a student
(`stages.evaluate.run_evaluate`, configured by `runs/evaluate.gin`)."""

from __future__ import annotations

from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.evaluate import run_evaluate

def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker evaluate", lambda parser: None,
      gin_utils.configured_binary(run_evaluate, "runs/evaluate.gin", "OUTPUT_DIR"),
      argv, "greedy and self-consistency accuracy, format errors and confusion, as "
      "report.json and report.md")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
