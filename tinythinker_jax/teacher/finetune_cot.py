"""Fine-tune-CoT's teacher: two-step zero-shot chain of thought (the reasoning,
then the answer asked for after it), `num_samples` rationales per question
(greedy for one, temperature sampling for "diverse reasoning"), keeping those
whose extracted answer equals the gold answer."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

from tinythinker_jax.data.schema import AnswerType, Example, RationaleRecord
from tinythinker_jax.reasoning import answers
from tinythinker_jax.teacher import prompts, replies
from tinythinker_jax.teacher.client import Prompt, TeacherClient
from tinythinker_jax.teacher.outcomes import (Method, Outcome, drop, gather_all,
                                              structured_mode)
from tinythinker_jax.teacher.outcomes import provenance as make_provenance


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
                             settings: FinetuneCotSettings,
                             filter_answers: bool = True) -> Outcome:
  temperature = 0.0 if settings.num_samples == 1 else settings.temperature
  mode = structured_mode(settings.structured_output)
  step1 = Prompt(text=prompts.zero_shot_cot_reasoning(example), temperature=temperature,
                 max_tokens=settings.max_tokens)
  extra = "" if mode == "none" else json.dumps(
      replies.response_format(mode, answer_schema(example, answer_type)))
  provenance = make_provenance(
      client.config.describe(), prompts.FINETUNE_COT_TEMPLATE_VERSION,
      {"temperature": temperature, "max_tokens": settings.max_tokens,
       "num_samples": settings.num_samples, "answer_max_tokens": settings.answer_max_tokens,
       "structured_output": mode})
  rationales = await client.samples(step1, settings.num_samples)
  answer_prompts = [Prompt(text=prompts.zero_shot_cot_answer(step1.text, r.text),
                           temperature=0.0, max_tokens=settings.answer_max_tokens,
                           extra_json=extra)
                    for r in rationales]
  replies_ = await gather_all(*(client.samples(p, 1) for p in answer_prompts))
  return finetune_cot_outcome(
      example, answer_type,
      [(r.sample_index, r.text, _teacher_answer(reply.text, example, answer_type,
                                                mode != "none"), reply.text)
       for r, [reply] in zip(rationales, replies_)], provenance, settings.num_samples,
      filter_answers=filter_answers)


def finetune_cot_outcome(example: Example, answer_type: AnswerType,
                         samples: Sequence[tuple[int, str, Optional[str], str]],
                         provenance: dict[str, Any], num_samples: int,
                         extra: Optional[Sequence[dict[str, Any]]] = None,
                         filter_answers: bool = True) -> Outcome:
  """Fine-tune-CoT's answer filter over (sample index, rationale, the teacher's
  answer or None, its answer reply) samples: a sample is kept when its answer
  equals the gold answer. `extra[i]` is stored with sample i's record. Without
  `filter_answers` (Distilling Step-by-Step) every sample with a rationale is
  kept under the gold answer; the teacher's accuracy is counted all the same."""
  outcome = Outcome(samples=num_samples)
  for i, (index, rationale, predicted, reply) in enumerate(samples):
    correct = answers.answers_match(predicted, example.answer, answer_type)
    if predicted is not None:
      outcome.teacher_total += 1
      outcome.teacher_correct += correct
    text = rationale.strip()
    if not text:
      drop(outcome, example, index, "empty rationale", reply)
    elif filter_answers and predicted is None:
      drop(outcome, example, index, "no answer found", reply, rationale=text)
    elif filter_answers and not correct:
      drop(outcome, example, index,
            f"answer differs from gold: teacher {predicted}, gold {example.answer}",
            reply, rationale=text, teacher_answer=predicted)
    else:
      outcome.kept.append(RationaleRecord(
          id=example.id, method=Method.FINETUNE_COT.value, example=example,
          rationale=text, answer=example.answer, sample_index=index,
          provenance=provenance,
          extra=dict(teacher_answer_text=reply.strip(),
                     **({} if filter_answers else {"teacher_answer": predicted}),
                     **(extra[i] if extra else {}))))
  return outcome
