"""The `tinythinker` command: `tinythinker VERB [flags]` runs one binary.

Each verb is a module of `tinythinker_jax.cli` named as the verb, with a
`main(argv)`, as t5x's binaries are (`train.py`, `infer.py`, ...);
`python -m tinythinker_jax VERB` and `python -m tinythinker_jax.cli.VERB` run
the same code. This file only dispatches.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from tinythinker_jax import registries

# verb -> (its module under tinythinker_jax.cli, one line of help)
BINARIES: registries.Registry[tuple[str, str]] = registries.Registry("verb")
for _verb, _entry in {
    "teach": ("teach", "write teacher rationales for a dataset (Fine-tune-CoT, "
              "TinyThinker)"),
    "vocab": ("vocab", "train a SentencePiece vocabulary with T5's conventions"),
    "materialize": ("materialize", "write a seqio task's splits as the arrays training "
                    "reads (no TF)"),
    "train": ("train", "train a student: phase 1 on rationales (runs/sft.gin), "
              "distillation from a teacher model (runs/distill.gin) or phase 2's "
              "DPO/RPO on preference pairs (runs/dpo.gin)"),
    "infer": ("infer", "run a student's reasoning chains over a dataset split; write "
              "per-example records"),
    "evaluate": ("evaluate", "greedy and self-consistency accuracy, format errors and "
                 "confusion, as report.json and report.md"),
    "score": ("score", "print the log-likelihood of given targets under a student"),
    "sample": ("sample", "self-reflection data: sample the student's chains, build "
               "preference pairs with reference log-probabilities"),
    "reflect": ("reflect", "iterated self-reflection: k rounds of sample -> DPO/RPO -> "
                "validate, keeping the best"),
    "export": ("export", "write a student as a Hugging Face folder of its family "
               "(safetensors, config, tokenizer)"),
    "pipeline": ("pipeline", "teach -> phase 1 -> (sample -> DPO) x k -> evaluate -> "
                 "export -> report, in one resumable run folder"),
    "data": ("data", "inspect a dataset: counts per split, answers, a rendered "
             "example"),
    "demo": ("demo", "run the most complete end-to-end job on the embedded defaults"),
}.items():
  BINARIES.register(_verb, _entry)
VERBS = tuple(sorted(BINARIES))


def _usage() -> str:
  lines = ["usage: tinythinker VERB [--gin_file=FILE] [--gin.NAME=VALUE] [flags]", "",
           "Distil a large language model's reasoning into small students (T5, the "
           "Llama family, GPT-2).", "",
           "verbs:"]
  lines += [f"  {verb:<12} {help_}" for verb, (_, help_) in BINARIES.items()]
  lines += ["", "`tinythinker VERB --help` lists a verb's flags."]
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0 if argv else 2
  verb, rest = argv[0], argv[1:]
  if verb not in BINARIES:
    print(f"tinythinker: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"tinythinker_jax.cli.{BINARIES[verb][0]}")
  return module.main(rest)


def console_main() -> None:
  sys.exit(main())


if __name__ == "__main__":
  console_main()
