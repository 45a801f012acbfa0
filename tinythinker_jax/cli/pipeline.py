"""`tinythinker pipeline`: dataset -> distilled students in one run folder
(`stages.pipeline.run_pipeline`, configured by `runs/pipeline.gin`)."""

from __future__ import annotations

from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.pipeline import run_pipeline

def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker pipeline", lambda parser: None,
      gin_utils.configured_binary(run_pipeline, "runs/pipeline.gin", "RUN_DIR"), argv,
      "teach -> phase 1 -> (sample -> DPO) x k -> evaluate -> export -> report, in one "
      "resumable run folder")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
