"""Teaching pipelines: dataset examples + a teacher -> rationale records.

Fine-tune-CoT: two-step zero-shot chain of thought, `num_samples` rationales
per question (greedy for one, temperature sampling for "diverse reasoning"),
keeping those whose extracted answer equals the gold answer.

TinyThinker: an instruction plus k random few-shot exemplars (as chat turns
or in the system message), the gold answer given as a hint, and optionally a
per-question JSON schema (structured output); every reply is read into key
information and one verdict per option (`replies`), unreadable replies are
retried with new seeds, near-duplicate key information (edit distance <= 10)
is dropped, and at most `max_per_question` samples are kept. Replacing the
gold label with the teacher's majority vote is an explicit option
(`relabel_by_majority`, off by default).

Outputs in `output_dir`: `records.jsonl` (kept rationales with provenance),
`dropped.jsonl` (with reasons), `summary.json`, and the append-only
`completions.jsonl` cache that makes a killed run resume without asking the
teacher again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import enum
import json
from typing import Any, Optional, Sequence

import editdistance
import numpy as np
import tqdm

from tinythinker_jax import errors, paths
from tinythinker_jax.data.schema import AnswerType, Example, RationaleRecord
from tinythinker_jax.reasoning import answers, formats
from tinythinker_jax.teacher import prompts, replies, rule_based
from tinythinker_jax.teacher.cache import CompletionCache
from tinythinker_jax.teacher.client import Prompt, TeacherClient, TeacherConfig

RECORDS = "records.jsonl"
DROPPED = "dropped.jsonl"
SUMMARY = "summary.json"
CACHE = "completions.jsonl"
RULE_BASED = "rule-based (derived from the question by rule; not an LLM)"


class Method(enum.Enum):
  FINETUNE_COT = "finetune_cot"
  TINYTHINKER = "tinythinker"


STRUCTURED_MODES = ("none", "json_schema", "json_object", "guided_json")


@dataclasses.dataclass(frozen=True)
class FinetuneCotSettings:
  num_samples: int = 1  # D: 1 is greedy; Fine-tune-CoT's diverse reasoning uses 8 or 64.
  temperature: float = 0.7  # Used when num_samples > 1.
  max_tokens: int = 128
  answer_max_tokens: int = 32
  # Step 2 constrained to the task's answers (an enum of the labels, yes/no, a
  # number): one of STRUCTURED_MODES, or None for the teacher's default
  # ('json_object' for the local llama.cpp teacher, 'none' for other endpoints).
  structured_output: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TinyThinkerSettings:
  num_samples: int = 8  # n: 8 for CSQA, 4 for OBQA and StrategyQA.
  max_per_question: Optional[int] = None  # Defaults to num_samples.
  temperature: float = 0.8
  max_tokens: int = 256  # Raised to what the schema admits under structured output.
  num_shots: int = 8  # 8 for CSQA and StrategyQA, 7 for OBQA.
  instruction_file: Optional[str] = None  # TinyThinker's request.json.
  exemplar_file: Optional[str] = None  # *_cot.json.
  min_edit_distance: int = 10  # Key information within this distance is a duplicate.
  relabel_by_majority: bool = False
  # The reply as a JSON object of a per-question schema (replies.rationale_schema):
  # one of STRUCTURED_MODES, or None for the teacher's default ('json_object'
  # for the local llama.cpp teacher, 'none' for other endpoints).
  structured_output: Optional[str] = None
  # Exemplars as user/assistant 'turns' or inside the 'system' message (the
  # paper's request). Completions endpoints always get one prompt.
  few_shot: str = "turns"
  format_retries: int = 2  # New-seed requests for a sample that cannot be parsed.


def _structured_mode(value: Optional[str]) -> str:
  mode = value or "none"
  if mode not in STRUCTURED_MODES:
    raise errors.UserError(f"structured_output={value!r}; expected one of {STRUCTURED_MODES}")
  return mode


@dataclasses.dataclass
class Outcome:
  """What teaching one example produced."""

  kept: list[RationaleRecord] = dataclasses.field(default_factory=list)
  dropped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  teacher_correct: int = 0
  teacher_total: int = 0  # Samples whose answer could be read.
  samples: int = 0  # Samples asked for (retries not counted).
  format_retries: int = 0  # Extra requests made for unparsable samples.
  recovered_by_retry: int = 0  # Samples parsed only on a retry.


def _provenance(teacher: str, template: str, sampling: dict[str, Any]) -> dict[str, Any]:
  return {"teacher": teacher, "prompt_template": template, "sampling": sampling,
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}


def _drop(outcome: Outcome, example: Example, index: int, reason: str, text: str,
          **extra: Any) -> None:
  """A dropped sample keeps the gold answer, so disagreements can be read."""
  outcome.dropped.append({"id": example.id, "sample_index": index, "reason": reason,
                          "gold": example.answer, "text": text, **extra})


def answer_schema(example: Example, answer_type: AnswerType) -> dict[str, Any]:
  """Fine-tune-CoT step 2's reply as `{"answer": ...}` of the task's kind."""
  if answer_type is AnswerType.LETTER:
    answer = {"type": "string", "enum": list(example.labels or answers.DEFAULT_LABELS)}
  elif answer_type is AnswerType.YES_NO:
    answer = {"type": "string", "enum": ["yes", "no"]}
  elif answer_type is AnswerType.NUMBER:
    answer = {"type": "number"}
  else:
    answer = {"type": "string", "maxLength": 64}
  return {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
          "additionalProperties": False}


def _teacher_answer(text: str, example: Example, answer_type: AnswerType,
                    structured: bool) -> Optional[str]:
  labels = example.labels or answers.DEFAULT_LABELS
  if structured:
    try:
      value = json.loads(text).get("answer")
    except (json.JSONDecodeError, AttributeError):
      value = None
    if value is not None:
      text = str(value)
  return answers.extract_teacher_answer(text, answer_type, labels, example.choices)


async def teach_finetune_cot(client: TeacherClient, example: Example,
                             answer_type: AnswerType,
                             settings: FinetuneCotSettings) -> Outcome:
  temperature = 0.0 if settings.num_samples == 1 else settings.temperature
  mode = _structured_mode(settings.structured_output)
  step1 = Prompt(text=prompts.zero_shot_cot_reasoning(example), temperature=temperature,
                 max_tokens=settings.max_tokens)
  extra = "" if mode == "none" else json.dumps(
      replies.response_format(mode, answer_schema(example, answer_type)))
  provenance = _provenance(
      client.config.describe(), prompts.FINETUNE_COT_TEMPLATE_VERSION,
      {"temperature": temperature, "max_tokens": settings.max_tokens,
       "num_samples": settings.num_samples, "answer_max_tokens": settings.answer_max_tokens,
       "structured_output": mode})
  rationales = await client.samples(step1, settings.num_samples)
  answer_prompts = [Prompt(text=prompts.zero_shot_cot_answer(step1.text, r.text),
                           temperature=0.0, max_tokens=settings.answer_max_tokens,
                           extra_json=extra)
                    for r in rationales]
  replies_ = await asyncio.gather(*(client.samples(p, 1) for p in answer_prompts))
  return finetune_cot_outcome(
      example, answer_type,
      [(r.sample_index, r.text, _teacher_answer(reply.text, example, answer_type,
                                                mode != "none"), reply.text)
       for r, [reply] in zip(rationales, replies_)], provenance, settings.num_samples)


def finetune_cot_outcome(example: Example, answer_type: AnswerType,
                         samples: Sequence[tuple[int, str, Optional[str], str]],
                         provenance: dict[str, Any], num_samples: int,
                         extra: Optional[Sequence[dict[str, Any]]] = None) -> Outcome:
  """Fine-tune-CoT's answer filter over (sample index, rationale, the teacher's
  answer or None, its answer reply) samples: a sample is kept when its answer
  equals the gold answer. `extra[i]` is stored with sample i's record."""
  outcome = Outcome(samples=num_samples)
  for i, (index, rationale, predicted, reply) in enumerate(samples):
    correct = answers.answers_match(predicted, example.answer, answer_type)
    if predicted is not None:
      outcome.teacher_total += 1
      outcome.teacher_correct += correct
    text = rationale.strip()
    if not text:
      _drop(outcome, example, index, "empty rationale", reply)
    elif predicted is None:
      _drop(outcome, example, index, "no answer found", reply, rationale=text)
    elif not correct:
      _drop(outcome, example, index,
            f"answer differs from gold: teacher {predicted}, gold {example.answer}",
            reply, rationale=text, teacher_answer=predicted)
    else:
      outcome.kept.append(RationaleRecord(
          id=example.id, method=Method.FINETUNE_COT.value, example=example,
          rationale=text, answer=example.answer, sample_index=index,
          provenance=provenance,
          extra=dict(teacher_answer_text=reply.strip(), **(extra[i] if extra else {}))))
  return outcome


def _retry_seed(base: int, example_id: str, sample_index: int, attempt: int) -> int:
  """A 31-bit seed per (run seed, example, sample, attempt), drawn from one SeedSequence."""
  words = [base, sample_index, attempt] + list(example_id.encode("utf-8"))
  return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def tinythinker_request(example: Example, settings: TinyThinkerSettings,
                        instruction: str, exemplars: Sequence[dict[str, Any]],
                        rng: np.random.Generator, endpoint: str) -> Prompt:
  """One question's request: exemplars laid out per `settings.few_shot`, the
  gold hint, and under structured output the question's own schema."""
  mode = _structured_mode(settings.structured_output)
  structured = mode != "none"
  messages = prompts.tinythinker_messages(example, example.gold_label, instruction,
                                          exemplars, settings.num_shots, rng,
                                          settings.few_shot, structured)
  max_tokens = settings.max_tokens
  extra = ""
  if structured:
    max_tokens = max(max_tokens, replies.structured_token_budget(example))
    # Key order is kept: a grammar generates properties in the schema's order.
    extra = json.dumps(replies.response_format(mode, replies.rationale_schema(example)))
  if endpoint == "completions":
    return Prompt(text=prompts.completion_prompt(messages),
                  temperature=settings.temperature, max_tokens=max_tokens, stop=("###",),
                  extra_json=extra)
  return Prompt(messages=messages, temperature=settings.temperature,
                max_tokens=max_tokens, extra_json=extra)


async def teach_tinythinker(client: TeacherClient, example: Example,
                            settings: TinyThinkerSettings, instruction: str,
                            exemplars: Sequence[dict[str, Any]],
                            rng: np.random.Generator) -> Outcome:
  gold = example.gold_label
  if gold is None:
    raise errors.UserError(f"{example.source or example.id}: TinyThinker needs a gold option")
  request = tinythinker_request(example, settings, instruction, exemplars, rng,
                                client.config.endpoint)  # checks structured_output
  mode = settings.structured_output or "none"
  provenance = _provenance(
      client.config.describe(), prompts.TINYTHINKER_TEMPLATE_VERSION,
      {"temperature": settings.temperature, "max_tokens": request.max_tokens,
       "num_samples": settings.num_samples, "num_shots": settings.num_shots,
       "few_shot": settings.few_shot, "structured_output": mode})
  outcome = Outcome(samples=settings.num_samples)

  structured = mode != "none"

  async def parsed_sample(sample):
    """The sample's parse; while it fails, up to `format_retries` new-seed
    requests (cached like any other). A failure keeps the first reply's error."""
    parsed = replies.parse_reply(sample.text, example, structured)
    attempt = 0
    while not parsed.ok and attempt < settings.format_retries:
      attempt += 1
      retry = dataclasses.replace(request, seed=_retry_seed(
          client.config.seed, example.id, sample.sample_index, attempt))
      [again] = await client.samples(retry, 1)
      outcome.format_retries += 1
      retried = replies.parse_reply(again.text, example, structured)
      if retried.ok:
        outcome.recovered_by_retry += 1
        return dataclasses.replace(again, sample_index=sample.sample_index), retried, \
            attempt
    return sample, parsed, attempt

  valid = []
  for sample, parsed, attempts in await asyncio.gather(
      *(parsed_sample(s) for s in await client.samples(request, settings.num_samples))):
    if not parsed.ok:
      _drop(outcome, example, sample.sample_index, f"format: {parsed.error}", sample.text,
            retries=attempts)
      continue
    key_info, verdicts = parsed.value
    outcome.teacher_total += 1
    correct = [v.label for v in verdicts.values() if v.correct]
    if len(correct) != 1:
      _drop(outcome, example, sample.sample_index,
            f"not exactly one option marked correct: {len(correct)}"
            + (f" ({', '.join(correct)})" if correct else ""), sample.text,
            rendered=replies.render_text(key_info, verdicts))
      continue
    marked = correct[0]
    outcome.teacher_correct += marked == gold
    valid.append((sample, key_info, verdicts, marked))
  keep_tinythinker(example, outcome, valid, provenance,
                   min_edit_distance=settings.min_edit_distance,
                   limit=settings.max_per_question or settings.num_samples,
                   relabel_by_majority=settings.relabel_by_majority)
  return outcome


def keep_tinythinker(example: Example, outcome: Outcome,
                     valid: Sequence[tuple[Any, str, dict, str]],
                     provenance: dict[str, Any], *, min_edit_distance: int, limit: int,
                     relabel_by_majority: bool = False,
                     extra: Optional[Sequence[dict[str, Any]]] = None) -> None:
  """TinyThinker's rules over readable samples `(sample, key_info, verdicts,
  marked option)` (a sample has `.sample_index` and `.text`): the marked option
  must be the label (gold, or the teacher's majority with
  `relabel_by_majority`), key information within `min_edit_distance` of a kept
  one is a near-duplicate, at most `limit` per question. Kept records go to
  `outcome.kept` (with `extra[i]`), the rest to `outcome.dropped`."""
  gold = example.gold_label
  label = gold
  if relabel_by_majority and valid:
    votes = collections.Counter(m for *_, m in valid)
    label = max(sorted(votes), key=lambda l: (votes[l], l == gold))
  kept_infos: list[str] = []
  for i, (sample, key_info, verdicts, marked) in enumerate(valid):
    rendered = replies.render_text(key_info, verdicts)
    if marked != label:
      _drop(outcome, example, sample.sample_index,
            f"teacher marks {marked} correct; the label is {label}", sample.text,
            rendered=rendered)
    elif any(editdistance.eval(key_info, k) <= min_edit_distance for k in kept_infos):
      _drop(outcome, example, sample.sample_index, "near-duplicate key information",
            sample.text, rendered=rendered)
    elif len(kept_infos) >= limit:
      _drop(outcome, example, sample.sample_index, "over the per-question limit",
            sample.text, rendered=rendered)
    else:
      kept_infos.append(key_info)
      details = dict(rationale_text=rendered, raw_reply=sample.text,
                     **(extra[i] if extra else {}))
      if label != gold:
        details["relabelled_from"] = gold
      outcome.kept.append(RationaleRecord(
          id=example.id, method=Method.TINYTHINKER.value, example=example, label=label,
          recall=key_info, analyses={l: verdicts[l].reason for l in example.labels},
          sample_index=sample.sample_index, provenance=provenance, extra=details))


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
  provenance = _provenance(RULE_BASED, f"rule-based/{solver}/v2",
                           {"num_samples": settings.num_samples,
                            "step_error_rate": settings.step_error_rate,
                            "answer_error_rate": settings.answer_error_rate,
                            "seed": settings.seed})
  provenance["rule_based"] = True
  derivations = [rule_based.derive(example, answer_type, settings, i)
                 for i in range(settings.num_samples)]
  errors_of = [{"teacher_errors": {"misread_steps": d.misread_steps,
                                   "wrong_answer": d.wrong_answer}} for d in derivations]
  if method is Method.FINETUNE_COT:
    return finetune_cot_outcome(
        example, answer_type, [(i, d.rationale, d.answer, d.answer)
                               for i, d in enumerate(derivations)],
        provenance, settings.num_samples, errors_of)
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
    summary.parse_rate = total / summary.samples
    summary.kept_rate = summary.kept / summary.samples
    summary.drop_rates = {k: v / summary.samples for k, v in summary.dropped.items()}
  summary.teacher_accuracy = (sum(o.teacher_correct for o in outcomes) / total
                              if total else None)
  summary.format_retries = sum(o.format_retries for o in outcomes)
  summary.recovered_by_retry = sum(o.recovered_by_retry for o in outcomes)
  output_dir = paths.as_path(output_dir)
  paths.write_jsonl(output_dir / RECORDS, kept)
  paths.write_jsonl(output_dir / DROPPED, dropped)
  paths.write_json(output_dir / SUMMARY, dataclasses.asdict(summary))
  return summary


async def _teach_async(examples: Sequence[Example], method: Method,
                       answer_type: AnswerType, output_dir: str, config: TeacherConfig,
                       finetune_cot: FinetuneCotSettings, tinythinker: TinyThinkerSettings,
                       seed: int, progress: bool) -> Summary:
  instruction = prompts.load_instruction(tinythinker.instruction_file)
  exemplars = (prompts.load_exemplars(tinythinker.exemplar_file)
               if tinythinker.exemplar_file else [])
  summary = Summary(method.value, config.describe(), examples=len(examples))
  summary.settings = dataclasses.asdict(
      finetune_cot if method is Method.FINETUNE_COT else tinythinker)
  with CompletionCache(paths.as_path(output_dir) / CACHE) as cache:
    summary.torn_cache_lines = cache.torn_lines
    async with TeacherClient(config, cache) as client:
      bar = tqdm.tqdm(total=len(examples), desc=f"teach ({method.value})", unit="q",
                      disable=not progress)
      kept = 0

      async def one(index: int, example: Example) -> Outcome:
        nonlocal kept
        if method is Method.FINETUNE_COT:
          outcome = await teach_finetune_cot(client, example, answer_type, finetune_cot)
        else:
          outcome = await teach_tinythinker(
              client, example, tinythinker, instruction, exemplars,
              np.random.default_rng([seed, index]))
        kept += len(outcome.kept)
        bar.update(1)
        bar.set_postfix(kept=kept, tok_s=f"{client.usage.tokens_per_second():.0f}",
                        cached=client.usage.cached)
        return outcome

      # Bound the scheduled examples too, so a crash loses little in-flight work.
      semaphore = asyncio.Semaphore(max(2 * config.max_concurrency, 1))

      async def bounded(index, example):
        async with semaphore:
          return await one(index, example)

      try:
        outcomes = await asyncio.gather(*(bounded(i, e) for i, e in enumerate(examples)))
      finally:
        bar.close()
      summary.usage = client.usage.to_json()
  return _finish(output_dir, outcomes, summary)


def teach(examples: Sequence[Example], *, method: Method, answer_type: AnswerType,
          output_dir: str, teacher: Optional[TeacherConfig] = None,
          finetune_cot: FinetuneCotSettings = FinetuneCotSettings(),
          tinythinker: TinyThinkerSettings = TinyThinkerSettings(),
          rule_based_settings: rule_based.RuleBasedSettings = rule_based.RuleBasedSettings(),
          seed: int = 0, progress: bool = True) -> Summary:
  """Teaches every example; `teacher=None` selects the rule-based teacher."""
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
                                  finetune_cot, tinythinker, seed, progress))
