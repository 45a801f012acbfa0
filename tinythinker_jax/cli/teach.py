"""`tinythinker teach`: teacher rationales for a dataset (Fine-tune-CoT, TinyThinker).

Runs `stages.teach.teach_dataset` as `runs/teach.gin` and the flags configure
it; prints the teacher's summary (kept, dropped and parse rates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Optional, Sequence

from tinythinker_jax import gin_utils


def _teach(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings, "runs/teach.gin", devices=False)
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.stages import teach  # pylint: disable=import-outside-toplevel
  output_dir = gin_utils.query("OUTPUT_DIR")
  if args.dry_run:
    found = gin.get_configurable(teach.teach_dataset)(dry_run=True)
    print(found.render())
    print(json.dumps(found.to_json(), indent=2))
    return 0
  summary = gin.get_configurable(teach.teach_dataset)()
  gin_utils.write_operative_config(output_dir)
  print(json.dumps(dataclasses.asdict(summary), indent=2))
  return 0


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry_run", action="store_true",
                      help="print the requests, estimated tokens and cost (with prices in "
                           "TeacherConfig) and exit without asking the teacher")


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker teach", _flags, _teach, argv,
                       "write teacher rationales for a dataset (Fine-tune-CoT, "
                       "TinyThinker)")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
