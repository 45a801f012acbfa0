"""`tinythinker train`: phase 1 on rationales (`stages.phase1.run`, `runs/sft.gin`),
distillation from a teacher model's distribution (the same run with a teacher,
`runs/distill.gin`) or phase 2's DPO/RPO on preference pairs
(`stages.phase2.run_dpo`, `runs/dpo.gin`)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import jax

from tinythinker_jax import gin_utils
from tinythinker_jax.stages import phase1


def _add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--stop_after", type=int, default=None,
                      help="stop (after checkpointing) at this step, e.g. to test "
                      "resumption")


def _train(args: argparse.Namespace, bindings: list[str]) -> int:
  # Joins the cluster (COORDINATOR_ADDRESS) and checks REQUIRED_PLATFORM.
  gin_utils.parse_flags(args, bindings, "runs/sft.gin")
  import gin  # pylint: disable=import-outside-toplevel
  fn = gin_utils.resolve(gin_utils.query_or("TRAIN_RUN")) or gin.get_configurable(phase1.run)
  model_dir = gin_utils.query("MODEL_DIR")
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
  result = fn(stop_after=args.stop_after)
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
    print(f"step {int(result.state.step)}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(result.last_metrics.items())))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker train", _add_flags, _train, argv,
                       "train a student: phase 1 on rationales (runs/sft.gin), "
                       "distillation from a teacher model (runs/distill.gin) or "
                       "phase 2's DPO/RPO on preference pairs (runs/dpo.gin)")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
