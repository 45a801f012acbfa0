"""TinyThinker's teacher: an instruction plus k random few-shot exemplars (as chat
turns or in the system message), the gold answer given as a hint, and
optionally a per-question JSON schema (structured output). Every reply is read
into key information and one verdict per option (`replies`); unreadable replies
are retried with new seeds, near-duplicate key information (edit distance <=
10) is dropped, and at most `max_per_question` samples are kept. Replacing the
gold label with the teacher's majority vote is an explicit option
(`relabel_by_majority`, off by default)."""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Optional, Sequence

import editdistance
import numpy as np

from tinythinker_jax import errors
from tinythinker_jax.data.schema import Example, RationaleRecord
from tinythinker_jax.teacher import prompts, replies
from tinythinker_jax.teacher.client import Prompt, TeacherClient
from tinythinker_jax.teacher.outcomes import (Method, Outcome, drop, gather_all,
                                              structured_mode)
from tinythinker_jax.teacher.outcomes import provenance as make_provenance


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
  # How structured output makes exactly one option correct
  # (replies.ONE_CORRECT_FORMS): 'one_of', 'final_answer' or 'none'.
  one_correct: str = "one_of"
  format_retries: int = 2  # New-seed requests for a sample that cannot be parsed.


def retry_seed(base: int, example_id: str, sample_index: int, attempt: int) -> int:
  """A 31-bit seed per (run seed, example, sample, attempt), drawn from one SeedSequence."""
  words = [base, sample_index, attempt] + list(example_id.encode("utf-8"))
  return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def tinythinker_request(example: Example, settings: TinyThinkerSettings,
                        instruction: str, exemplars: Sequence[dict[str, Any]],
                        rng: np.random.Generator, endpoint: str) -> Prompt:
  """One question's request: exemplars laid out per `settings.few_shot`, the
  gold hint, and under structured output the question's own schema."""
  mode = structured_mode(settings.structured_output)
  structured = mode != "none"
  messages = prompts.tinythinker_messages(example, example.gold_label, instruction,
                                          exemplars, settings.num_shots, rng,
                                          settings.few_shot, structured,
                                          replies.check_one_correct(settings.one_correct))
  max_tokens = settings.max_tokens
  extra = ""
  if structured:
    max_tokens = max(max_tokens, replies.structured_token_budget(example))
    # Key order is kept: a grammar generates properties in the schema's order.
    extra = json.dumps(replies.response_format(mode, replies.rationale_schema(
        example, settings.one_correct)))
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
  provenance = make_provenance(
      client.config.describe(), prompts.TINYTHINKER_TEMPLATE_VERSION,
      {"temperature": settings.temperature, "max_tokens": request.max_tokens,
       "num_samples": settings.num_samples, "num_shots": settings.num_shots,
       "few_shot": settings.few_shot, "structured_output": mode,
       "one_correct": settings.one_correct if mode != "none" else "not constrained"})
  outcome = Outcome(samples=settings.num_samples)

  structured = mode != "none"

  async def parsed_sample(sample):
    """The sample's parse; while it fails, up to `format_retries` new-seed
    requests (cached like any other). A failure keeps the first reply's error."""
    parsed = replies.parse_reply(sample.text, example, structured)
    attempt = 0
    while not parsed.ok and attempt < settings.format_retries:
      attempt += 1
      retry = dataclasses.replace(request, seed=retry_seed(
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
  for sample, parsed, attempts in await gather_all(
      *(parsed_sample(s) for s in await client.samples(request, settings.num_samples))):
    if not parsed.ok:
      drop(outcome, example, sample.sample_index, f"format: {parsed.error}", sample.text,
            retries=attempts)
      continue
    key_info, verdicts = parsed.value
    outcome.teacher_total += 1
    correct = [v.label for v in verdicts.values() if v.correct]
    if len(correct) != 1:
      drop(outcome, example, sample.sample_index,
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
      drop(outcome, example, sample.sample_index,
            f"teacher marks {marked} correct; the label is {label}", sample.text,
            rendered=rendered)
    elif any(editdistance.eval(key_info, k) <= min_edit_distance for k in kept_infos):
      drop(outcome, example, sample.sample_index, "near-duplicate key information",
            sample.text, rendered=rendered)
    elif len(kept_infos) >= limit:
      drop(outcome, example, sample.sample_index, "over the per-question limit",
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
