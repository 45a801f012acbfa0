"""`tinythinker score`: the log-likelihood of given targets under a student
(`stages.score.run_score`)."""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence
from tinythinker_jax import errors, gin_utils, paths
from tinythinker_jax import student as student_lib
from tinythinker_jax.stages.score import run_score

def _add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model_dir", required=True,
                 help="one of our model dirs, a Hugging Face folder or a GGUF file")
  p.add_argument("--input", action="append", default=[], help="an input (repeatable)")
  p.add_argument("--target", action="append", default=[],
                 help="its target (repeatable, in the same order)")
  p.add_argument("--file", default="", help="JSONL with 'inputs' and 'targets' fields")
  p.add_argument("--vocabulary", default="", help="default: the checkpoint's own")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_input_length", type=int, default=512,
                 help="longer inputs keep their last tokens")


def _score(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings)
  inputs, targets = list(args.input), list(args.target)
  if args.file:
    for i, record in enumerate(paths.read_jsonl(args.file), 1):
      if "inputs" not in record or "targets" not in record:
        raise errors.UserError(f"{args.file}:{i}: expected 'inputs' and 'targets' fields")
      inputs.append(record["inputs"])
      targets.append(record["targets"])
  if not inputs or len(inputs) != len(targets):
    raise errors.UserError("give as many --input as --target flags (or --file)")
  results = run_score(
      model_dir=args.model_dir, inputs=inputs, targets=targets, vocabulary=args.vocabulary,
      student=student_lib.StudentSettings(batch_size=args.batch_size,
                                          max_input_length=args.max_input_length))
  for source, target, result in zip(inputs, targets, results):
    print(json.dumps({"inputs": source, "targets": target, "logprob": result["logprob"],
                      "num_tokens": result["num_tokens"],
                      "mean_logprob": result["logprob"] / result["num_tokens"]}))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker score", _add_flags, _score, argv,
                       "print the log-likelihood of given targets under a student")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
