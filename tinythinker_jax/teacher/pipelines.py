"""Teaching pipelines: dataset examples + a teacher -> rationale records.

The teachers: Fine-tune-CoT's zero-shot chain of thought (`finetune_cot`),
TinyThinker's three-stage rationales (`tinythinker`), both from an LLM behind
an OpenAI-compatible endpoint, and the rule-based teacher (`rule_based`),
filtered as an LLM's samples are. `teach` drives one of them over a dataset
split with bounded concurrency and a progress bar.

Outputs in `output_dir`: `records.jsonl` (kept rationales with provenance),
`dropped.jsonl` (with reasons), `summary.json`, and the append-only
`completions.jsonl` cache that makes a killed run resume without asking the
teacher again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any, Optional, Sequence

import httpx
import numpy as np
import tqdm

from tinythinker_jax import errors, paths
from tinythinker_jax.data.schema import AnswerType, Example, RationaleRecord
from tinythinker_jax.reasoning import formats
from tinythinker_jax.teacher import batch as batch_lib
from tinythinker_jax.teacher import estimate as estimate_lib
from tinythinker_jax.teacher import prompts, recorded, replies, rule_based
from tinythinker_jax.teacher.cache import CompletionCache
from tinythinker_jax.teacher.client import Deferred, TeacherClient, TeacherConfig
# The settings are bound in gin as pipelines.FinetuneCotSettings and
# pipelines.TinyThinkerSettings (runs/teach.gin).
from tinythinker_jax.teacher.finetune_cot import (FinetuneCotSettings, finetune_cot_outcome,
                                                  teach_finetune_cot)
from tinythinker_jax.teacher.outcomes import Method, Outcome
from tinythinker_jax.teacher.outcomes import provenance as make_provenance
from tinythinker_jax.teacher.tinythinker import (TinyThinkerSettings, keep_tinythinker,
                                                 teach_tinythinker)

RECORDS = "records.jsonl"
DROPPED = "dropped.jsonl"
SUMMARY = "summary.json"
CACHE = "completions.jsonl"
RULE_BASED = "rule-based (derived from the question by rule; not an LLM)"


# ------------------------------------------------------------- rule-based teacher


@dataclasses.dataclass(frozen=True)
class _RuleSample:
  sample_index: int
  text: str


def rule_based_outcome(example: Example, method: Method, answer_type: AnswerType,
                       settings: rule_based.RuleBasedSettings = rule_based.RuleBasedSettings(),
                       min_edit_distance: int = 10) -> Outcome:
  """The rule-based teacher's samples for one example, filtered as an LLM's are
  (`rule_based`: exact, or with its error rates)."""
  solver, _ = rule_based.solver_for(example)
  provenance = make_provenance(RULE_BASED, f"rule-based/{solver}/v2",
                           {"num_samples": settings.num_samples,
                            "step_error_rate": settings.step_error_rate,
                            "answer_error_rate": settings.answer_error_rate,
                            "seed": settings.seed})
  provenance["rule_based"] = True
  derivations = [rule_based.derive(example, answer_type, settings, i)
                 for i in range(settings.num_samples)]
  errors_of = [{"teacher_errors": {"misread_steps": d.misread_steps,
                                   "wrong_answer": d.wrong_answer}} for d in derivations]
  if method is not Method.TINYTHINKER:
    return finetune_cot_outcome(
        example, answer_type, [(i, d.rationale, d.answer, d.answer)
                               for i, d in enumerate(derivations)],
        provenance, settings.num_samples, errors_of,
        filter_answers=method is Method.FINETUNE_COT)
  if not example.choices or example.gold_label is None:
    raise errors.UserError(f"{example.source or example.id}: TinyThinker rationales need "
                           "options and a gold option")
  outcome = Outcome(samples=settings.num_samples, teacher_total=settings.num_samples)
  valid, extra = [], []
  for i, d in enumerate(derivations):
    marked = rule_based.option_label(example, d.answer)
    verdicts = {c.label: formats.OptionVerdict(c.label, c.label == marked, d.analyses[c.label])
                for c in example.choices}
    outcome.teacher_correct += marked == example.gold_label
    valid.append((_RuleSample(i, replies.render_text(d.recall, verdicts)), d.recall,
                  verdicts, marked))
    extra.append(errors_of[i])
  keep_tinythinker(example, outcome, valid, provenance,
                   min_edit_distance=min_edit_distance, limit=settings.num_samples,
                   extra=extra)
  return outcome


# ------------------------------------------------------------------- the driver


@dataclasses.dataclass
class Summary:
  method: str
  teacher: str
  examples: int = 0
  samples: int = 0
  kept: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  # Samples whose reply could be read (a TinyThinker rationale that parsed, a
  # Fine-tune-CoT answer that was found), over all samples.
  parsed: int = 0
  parse_rate: Optional[float] = None
  kept_rate: Optional[float] = None
  drop_rates: dict[str, float] = dataclasses.field(default_factory=dict)
  # Of the parsed samples, those whose answer equals the gold answer.
  teacher_accuracy: Optional[float] = None
  format_retries: int = 0  # Extra requests made for unparsable samples...
  recovered_by_retry: int = 0  # ...and the samples they recovered.
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  usage: dict[str, Any] = dataclasses.field(default_factory=dict)
  torn_cache_lines: int = 0


DROP_KINDS = {"format:": "format", "teacher marks": "teacher disagrees with the label",
              "answer differs": "answer differs from gold"}


def _reason_kind(reason: str) -> str:
  """The reason's category for counting (details such as letters stripped)."""
  for prefix, kind in DROP_KINDS.items():
    if reason.startswith(prefix):
      return kind
  return reason.split(":")[0]


def _finish(output_dir: str, outcomes: Sequence[Outcome], summary: Summary) -> Summary:
  kept = [r for o in outcomes for r in o.kept]
  dropped = [r for o in outcomes for r in o.dropped]
  summary.kept = len(kept)
  summary.samples = len(kept) + len(dropped)
  summary.dropped = dict(collections.Counter(_reason_kind(d["reason"]) for d in dropped))
  total = sum(o.teacher_total for o in outcomes)
  summary.parsed = total
  if summary.samples:
    # (answer records have no reply to parse)
    summary.parse_rate = (total / summary.samples
                          if summary.method != Method.ANSWERS.value else None)
    summary.kept_rate = summary.kept / summary.samples
    summary.drop_rates = {k: v / summary.samples for k, v in summary.dropped.items()}
  summary.teacher_accuracy = (sum(o.teacher_correct for o in outcomes) / total
                              if total else None)
  broke = summary.dropped.get("not exactly one option marked correct", 0)
  constrained = (summary.settings.get("structured_output") not in (None, "none") and
                 summary.settings.get("one_correct", "none") != "none")
  if broke and constrained:
    summary.settings["one_correct_constraint"] += (
        f"; NOT enforced by this endpoint: {broke} replies marked several or no "
        "options correct")
  summary.format_retries = sum(o.format_retries for o in outcomes)
  summary.recovered_by_retry = sum(o.recovered_by_retry for o in outcomes)
  output_dir = paths.as_path(output_dir)
  paths.write_jsonl(output_dir / RECORDS, kept)
  paths.write_jsonl(output_dir / DROPPED, dropped)
  paths.write_json(output_dir / SUMMARY, dataclasses.asdict(summary))
  return summary


async def _teach_examples(client: TeacherClient, examples: Sequence[Example],
                          method: Method, answer_type: AnswerType,
                          finetune_cot: FinetuneCotSettings,
                          tinythinker: TinyThinkerSettings, instruction: str,
                          exemplars: Sequence[dict[str, Any]], seed: int,
                          progress: bool) -> Optional[list[Outcome]]:
  """Every example's outcome; None when the client deferred requests (then
  every example has recorded what it needs next)."""
  deferred = client.defer_to is not None
  bar = tqdm.tqdm(total=len(examples), unit="q", disable=not progress,
                  desc=f"{'collect' if deferred else 'teach'} ({method.value})")
  kept = 0

  async def one(index: int, example: Example) -> Optional[Outcome]:
    nonlocal kept
    try:
      if method is not Method.TINYTHINKER:
        outcome = await teach_finetune_cot(client, example, answer_type, finetune_cot,
                                           filter_answers=method is Method.FINETUNE_COT)
      else:
        outcome = await teach_tinythinker(
            client, example, tinythinker, instruction, exemplars,
            np.random.default_rng([seed, index]))
    except Deferred:
      outcome = None
    kept += len(outcome.kept) if outcome else 0
    bar.update(1)
    bar.set_postfix(kept=kept, tok_s=f"{client.usage.tokens_per_second():.0f}",
                    cached=client.usage.cached,
                    **({"deferred": len(client.defer_to)} if deferred else {}))
    return outcome

  # Bound the scheduled examples too, so a crash loses little in-flight work.
  semaphore = asyncio.Semaphore(max(2 * client.config.max_concurrency, 1))

  async def bounded(index, example):
    async with semaphore:
      return await one(index, example)

  try:
    outcomes = await asyncio.gather(*(bounded(i, e) for i, e in enumerate(examples)))
  finally:
    bar.close()
  return None if any(o is None for o in outcomes) else list(outcomes)


async def _teach_async(examples: Sequence[Example], method: Method,
                       answer_type: AnswerType, output_dir: str, config: TeacherConfig,
                       finetune_cot: FinetuneCotSettings, tinythinker: TinyThinkerSettings,
                       seed: int, progress: bool,
                       transport: Optional[httpx.AsyncBaseTransport] = None) -> Summary:
  instruction = prompts.load_instruction(tinythinker.instruction_file)
  exemplars = (prompts.load_exemplars(tinythinker.exemplar_file)
               if tinythinker.exemplar_file else [])
  summary = Summary(method.value, config.describe(), examples=len(examples))
  summary.settings = dataclasses.asdict(
      tinythinker if method is Method.TINYTHINKER else finetune_cot)
  summary.settings["one_correct_constraint"] = _one_correct_note(method, tinythinker)
  with CompletionCache(paths.as_path(output_dir) / CACHE) as cache:
    summary.torn_cache_lines = cache.torn_lines

    async def replay(defer_to):
      async with TeacherClient(config, cache, transport, defer_to) as client:
        outcomes = await _teach_examples(client, examples, method, answer_type,
                                         finetune_cot, tinythinker, instruction,
                                         exemplars, seed, progress)
        summary.usage = client.usage.to_json()
        return outcomes

    if config.batch:
      async with batch_lib.BatchRunner(config, cache, output_dir, transport,
                                       progress) as runner:
        outcomes = await batch_lib.run_rounds(replay, runner)
        summary.usage.update(runner.usage())
    else:
      outcomes = await replay(None)
  return _finish(output_dir, outcomes, summary)


def dry_run(examples: Sequence[Example], *, method: Method, answer_type: AnswerType,
            output_dir: str, teacher: TeacherConfig,
            finetune_cot: FinetuneCotSettings = FinetuneCotSettings(),
            tinythinker: TinyThinkerSettings = TinyThinkerSettings(),
            seed: int = 0) -> estimate_lib.Estimate:
  """What teaching would ask for (`teacher.estimate`), without sending anything;
  an existing completion cache in `output_dir` counts as paid for."""
  instruction = prompts.load_instruction(tinythinker.instruction_file)
  exemplars = (prompts.load_exemplars(tinythinker.exemplar_file)
               if tinythinker.exemplar_file else [])
  cache_path = paths.as_path(output_dir) / CACHE

  async def collect():
    pending: dict = {}
    with CompletionCache(cache_path) if cache_path.exists() else \
        _EmptyCache() as cache:
      async with TeacherClient(teacher, cache, defer_to=pending) as client:
        await _teach_examples(client, examples, method, answer_type, finetune_cot,
                              tinythinker, instruction, exemplars, seed, progress=False)
        return pending, client.usage.cached

  pending, cached = asyncio.run(collect())
  return estimate_lib.estimate(
      pending, teacher, len(examples), cached, method.value,
      answer_max_tokens=finetune_cot.answer_max_tokens,
      format_retries=tinythinker.format_retries)


class _EmptyCache:
  """A cache with nothing in it that writes nothing (a dry run creates no files)."""

  def get(self, key):
    return None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


def _one_correct_note(method: Method, settings: TinyThinkerSettings) -> Optional[str]:
  """What made each TinyThinker rationale mark exactly one option correct."""
  if method is not Method.TINYTHINKER:
    return None
  if settings.structured_output in (None, "none"):
    return ("not constrained: text replies (structured_output='none'); replies that "
            "mark several options correct are dropped")
  return (f"the schema ({settings.one_correct!r}), where the endpoint enforces it "
          f"({settings.structured_output!r}); replies that break it are dropped")


def teach(examples: Sequence[Example], *, method: Method, answer_type: AnswerType,
          output_dir: str, teacher: Optional[TeacherConfig] = None,
          finetune_cot: FinetuneCotSettings = FinetuneCotSettings(),
          tinythinker: TinyThinkerSettings = TinyThinkerSettings(),
          rule_based_settings: rule_based.RuleBasedSettings = rule_based.RuleBasedSettings(),
          seed: int = 0, progress: bool = True,
          transport: Optional[httpx.AsyncBaseTransport] = None) -> Summary:
  """Teaches every example; `teacher=None` selects the rule-based teacher.
  With `teacher.batch`, through the Batch API (`teacher.batch`)."""
  paths.as_path(output_dir).mkdir(parents=True, exist_ok=True)
  if teacher is None:
    outcomes = [rule_based_outcome(e, method, answer_type, rule_based_settings,
                                   tinythinker.min_edit_distance)
                for e in tqdm.tqdm(examples, desc="teach (rule-based)",
                                   disable=not progress)]
    summary = Summary(method.value, RULE_BASED, examples=len(examples))
    summary.settings = dataclasses.asdict(rule_based_settings)
    return _finish(output_dir, outcomes, summary)
  return asyncio.run(_teach_async(examples, method, answer_type, output_dir, teacher,
                                  finetune_cot, tinythinker, seed, progress, transport))


ANSWERS_TEACHER = "none (the dataset's gold answers)"


def answer_records(examples: Sequence[Example], output_dir: str) -> Summary:
  """Every question with its gold answer as a record (`Method.ANSWERS`), for
  answer-only students: no teacher, nothing dropped, written as teaching is."""
  paths.as_path(output_dir).mkdir(parents=True, exist_ok=True)
  outcomes = [Outcome(kept=[RationaleRecord(id=e.id, method=Method.ANSWERS.value, example=e,
                                            answer=e.answer,
                                            provenance={"teacher": ANSWERS_TEACHER})],
                      samples=1) for e in examples]
  return _finish(output_dir, outcomes, Summary(Method.ANSWERS.value, ANSWERS_TEACHER,
                                               examples=len(examples)))


def teach_recorded(examples: Sequence[Example], *, answer_type: AnswerType, output_dir: str,
                   settings: recorded.RecordedSettings, progress: bool = True,
                   method: Method = Method.FINETUNE_COT) -> Summary:
  """Recorded chains (`teacher.recorded`) as Fine-tune-CoT records, filtered and
  counted as a live teacher's: the same records, dropped samples and summary
  (`Method.STEP_BY_STEP`: every chain kept under the gold answer)."""
  if method is Method.TINYTHINKER:
    raise errors.UserError(
        "method='tinythinker' with teacher='recorded': recorded chains are Fine-tune-CoT "
        "rationales (method 'finetune_cot' or 'step_by_step'); TinyThinker's three-stage "
        "records need a teacher that writes them")
  if method is Method.STEP_BY_STEP:
    settings = dataclasses.replace(settings, filter_answers=False)
  paths.as_path(output_dir).mkdir(parents=True, exist_ok=True)
  outcomes, summary_settings = recorded.recorded_outcomes(examples, answer_type, settings,
                                                          progress)
  summary = Summary(method.value, f"recorded chains: {settings.path}",
                    examples=len(examples))
  summary.settings = summary_settings
  return _finish(output_dir, outcomes, summary)
