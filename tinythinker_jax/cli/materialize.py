"""`tinythinker materialize`: a seqio task's splits as the arrays training reads
(`stages.materialize.prepare_data`)."""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.materialize import prepare_data

def _add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--task", required=True, help="a seqio task or mixture name")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--inputs_length", type=int, required=True)
  parser.add_argument("--targets_length", type=int, required=True)
  parser.add_argument("--records_dir", default="", help="$TINYTHINKER_RECORDS_DIR")
  parser.add_argument("--vocabulary", default="", help="$TINYTHINKER_VOCAB")
  parser.add_argument("--pack", action="store_true",
                      help="pack several examples per row, as seqio's "
                      "EncDecFeatureConverter(pack=True)")


def _materialize(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings)
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  manifest = prepare_data(args.task, lengths, args.output_dir,
                          records_dir=args.records_dir, vocabulary=args.vocabulary,
                          pack=args.pack)
  print(json.dumps(manifest, indent=2))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker materialize", _add_flags, _materialize, argv,
                       "write a seqio task's splits as the arrays training reads")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
