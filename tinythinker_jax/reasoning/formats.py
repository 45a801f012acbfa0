"""Rationale formats: render student inputs/targets, parse model output into fields.

Pure functions of examples and rationale fields (docs/methods.md gives the exact
strings). Parsing never raises on model output: it returns a `Parsed` whose
`ok` is False with the reason.

| format | input | target |
|---|---|---|
| vanilla | `{question}` | `{answer}` |
| Fine-tune-CoT | `{question}` | `{rationale} --> {answer}` |
| recall | `{Q}\\n{options}\\nRecall:` | the key information |
| analyze (per option X) | `...Recall: {recall}\\nAnalyze: For option X,` | the reason for X |
| summarize | `...Analyze: For option A, ... For option B, ...\\nSummarize:` | `So the answer is option {GT}.` |
| step-by-step | `predict: {question}` / `explain: {question}` | `{answer}` / `{rationale}` |
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Generic, Mapping, Optional, Sequence, TypeVar

from tinythinker_jax.data.schema import AnswerType, Example, RationaleRecord
from tinythinker_jax.reasoning import answers

T = TypeVar("T")


class Format(enum.Enum):
  VANILLA = "vanilla"
  FINETUNE_COT = "finetune_cot"
  # Fine-tune-CoT's decoder-only (GPT-2/GPT-3) format: `{question} ###` ->
  # ` {rationale} --> {answer} END`.
  FINETUNE_COT_DECODER = "finetune_cot_decoder"
  TINYTHINKER = "tinythinker"  # recall -> analyze each option -> summarize
  SUMMARIZE_ONLY = "summarize"  # ablations of the three stages
  RECALL_SUMMARIZE = "recall_summarize"
  ANALYZE_SUMMARIZE = "analyze_summarize"
  STEP_BY_STEP = "step_by_step"  # distilling step-by-step's predict:/explain:


class Stage(enum.Enum):
  """A format's training streams: TinyThinker's stages, or Distilling
  Step-by-Step's two tasks."""

  RECALL = "recall"
  ANALYZE = "analyze"
  SUMMARIZE = "summarize"
  PREDICT = "predict"  # Distilling Step-by-Step: `predict: {question}` -> the answer
  EXPLAIN = "explain"  # ...and `explain: {question}` -> the rationale


STAGES_OF = {  # The staged (TinyThinker) formats: a chain of stages at inference.
    Format.TINYTHINKER: (Stage.RECALL, Stage.ANALYZE, Stage.SUMMARIZE),
    Format.SUMMARIZE_ONLY: (Stage.SUMMARIZE,),
    Format.RECALL_SUMMARIZE: (Stage.RECALL, Stage.SUMMARIZE),
    Format.ANALYZE_SUMMARIZE: (Stage.ANALYZE, Stage.SUMMARIZE),
}
# Multi-task formats: trained on several tasks in every batch, one pass at inference.
TASKS_OF = {Format.STEP_BY_STEP: (Stage.PREDICT, Stage.EXPLAIN)}


@dataclasses.dataclass(frozen=True)
class Parsed(Generic[T]):
  """A parse result: the value, or why there is none."""

  value: Optional[T] = None
  error: Optional[str] = None

  @property
  def ok(self) -> bool:
    return self.error is None

  @classmethod
  def fail(cls, reason: str) -> "Parsed[T]":
    return cls(None, reason)


@dataclasses.dataclass(frozen=True)
class TextPair:
  inputs: str
  targets: str


# ---------------------------------------------------------------- Fine-tune-CoT


def finetune_cot_question(example: Example) -> str:
  """The question as Fine-tune-CoT writes it, with `Answer choices:` for letter tasks."""
  if not example.choices or example.answer in ("yes", "no"):
    return example.question
  options = ", ".join(f"({c.label}) {c.text}" for c in example.choices)
  return f"{example.question} Answer choices: {options}."


def vanilla(example: Example) -> TextPair:
  return TextPair(finetune_cot_question(example), str(example.answer))


def finetune_cot(example: Example, rationale: str, answer: Optional[str] = None) -> TextPair:
  answer = example.answer if answer is None else answer
  return TextPair(finetune_cot_question(example),
                  f"{rationale.strip()} {answers.ANSWER_ARROW} {answer}")


DECODER_PROMPT_END = " ###"  # Fine-tune-CoT's decoder-only prompt separator...
DECODER_COMPLETION_END = " END"  # ...and completion terminator.


def finetune_cot_decoder_prompt(example: Example) -> str:
  return f"{finetune_cot_question(example)}{DECODER_PROMPT_END}"


def finetune_cot_decoder(example: Example, rationale: str,
                         answer: Optional[str] = None) -> TextPair:
  """The decoder-only format as Fine-tune-CoT's code builds it: the prompt
  ends in ` ###`, the completion starts with a space and ends in ` END`."""
  answer = example.answer if answer is None else answer
  return TextPair(finetune_cot_decoder_prompt(example),
                  f" {rationale.strip()} {answers.ANSWER_ARROW} {answer}{DECODER_COMPLETION_END}")


def strip_completion_end(text: str) -> str:
  """A decoder-only completion without its ` END` (and whatever followed it)."""
  index = text.find(DECODER_COMPLETION_END.strip())
  return (text[:index] if index >= 0 else text).strip()


def parse_finetune_cot(text: str, answer_type: AnswerType,
                       labels: Sequence[str] = ("A", "B", "C", "D", "E")
                       ) -> Parsed[tuple[str, str]]:
  """`rationale --> answer` into (rationale, canonical answer)."""
  if answers.ANSWER_ARROW not in text:
    return Parsed.fail("no '-->' separating rationale and answer")
  rationale, _ = text.split(answers.ANSWER_ARROW, 1)  # The evaluator reads the first.
  answer = answers.extract_answer(text, answer_type, labels)
  if answer is None:
    return Parsed.fail("no answer after '-->'")
  return Parsed((rationale.strip(), answer))


# ---------------------------------------------------------------- TinyThinker


def options_line(example: Example) -> str:
  """Options on one line: `(A) text (B) text ...`."""
  return " ".join(f"({c.label}) {c.text}" for c in example.choices)


def _head(example: Example) -> str:
  if not example.choices:
    raise ValueError(f"example {example.id}: TinyThinker formats need labelled options")
  return f"{example.question}\n{options_line(example)}"


def recall_input(example: Example) -> str:
  return f"{_head(example)}\nRecall:"


def _with_recall(example: Example, recall: Optional[str]) -> str:
  head = _head(example)
  return head if recall is None else f"{head}\nRecall: {ensure_period(recall)}"


def analyze_input(example: Example, recall: Optional[str], label: str) -> str:
  return f"{_with_recall(example, recall)}\nAnalyze: For option {label},"


def analyses_text(analyses: Mapping[str, str], labels: Sequence[str]) -> str:
  return " ".join(f"For option {label}, {analyses[label].strip()}" for label in labels)


def summarize_input(example: Example, recall: Optional[str],
                    analyses: Optional[Mapping[str, str]]) -> str:
  text = _with_recall(example, recall)
  if analyses is not None:
    text += f"\nAnalyze: {analyses_text(analyses, example.labels)}"
  return f"{text}\nSummarize:"


def summarize_target(label: str) -> str:
  return f"So the answer is option {label}."


def ensure_period(text: str) -> str:
  """Recall sentences end with '.' before the chain goes on (TinyThinker's rule)."""
  text = text.strip()
  return text if text.endswith(".") else text + "."


def parse_summary(text: str, labels: Sequence[str]) -> Parsed[str]:
  label = answers.extract_tinythinker_answer(text)
  if label is None:
    return Parsed.fail("no 'the answer is option X.'")
  if label not in labels:
    return Parsed.fail(f"option {label} is not one of {''.join(labels)}")
  return Parsed(label)


def stage_pairs(example: Example, recall: Optional[str], analyses: Mapping[str, str],
                fmt: Format = Format.TINYTHINKER) -> dict[Stage, list[TextPair]]:
  """Training pairs of each stage of `fmt` for one example with its gold fields."""
  stages = STAGES_OF[fmt]
  use_recall = recall if Stage.RECALL in stages else None
  use_analyses = analyses if Stage.ANALYZE in stages else None
  gold = example.gold_label
  if gold is None:
    raise ValueError(f"example {example.id}: no gold option label")
  pairs: dict[Stage, list[TextPair]] = {}
  if Stage.RECALL in stages:
    pairs[Stage.RECALL] = [TextPair(recall_input(example), ensure_period(recall))]
  if Stage.ANALYZE in stages:
    pairs[Stage.ANALYZE] = [TextPair(analyze_input(example, use_recall, label),
                                     analyses[label].strip()) for label in example.labels]
  pairs[Stage.SUMMARIZE] = [TextPair(summarize_input(example, use_recall, use_analyses),
                                     summarize_target(gold))]
  return pairs


def render_record(record: Any, fmt: Format,
                  stage: Optional[Stage]) -> list[dict[str, str]]:
  """One rationale record (`RationaleRecord`, or its JSON) -> `{inputs, targets,
  answer, id}` examples of `fmt` (for the stage formats, of `stage`)."""
  if isinstance(record, dict):
    record = RationaleRecord.from_json(record)
  example = record.example
  if fmt is Format.VANILLA:
    pairs = [vanilla(example)]
  elif fmt is Format.FINETUNE_COT:
    pairs = [finetune_cot(example, record.rationale, record.answer)]
  elif fmt is Format.FINETUNE_COT_DECODER:
    pairs = [finetune_cot_decoder(example, record.rationale, record.answer)]
  elif fmt is Format.STEP_BY_STEP:
    both = step_by_step(example, record.rationale, record.answer)
    pairs = [both[stage]] if stage is not None else list(both.values())
  else:
    labelled = dataclasses.replace(example, answer=record.label or example.gold_label)
    pairs = stage_pairs(labelled, record.recall, record.analyses or {}, fmt)[stage]
  answer = record.label or record.answer or example.answer or ""
  return [{"inputs": p.inputs, "targets": p.targets, "answer": str(answer),
           "id": str(record.id)} for p in pairs]


# ------------------------------------------------------- distilling step-by-step


PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "


def step_by_step_question(example: Example) -> str:
  """The question as Distilling Step-by-Step writes it: multiple-choice options
  on lines of their own (`{question}\nAnswer Choices:\n(a) ...`, its CommonsenseQA
  input); other questions as they are."""
  if not example.choices or example.answer in ("yes", "no"):
    return example.question
  options = "\n".join(f"({c.label.lower()}) {c.text}" for c in example.choices)
  return f"{example.question}\nAnswer Choices:\n{options}"


def step_by_step_label(example: Example, answer: Optional[str] = None) -> str:
  """The label task's target: the gold option's text (its CommonsenseQA labels), or
  the answer itself (yes/no, a number: SVAMP's value, not its equation)."""
  answer = example.answer if answer is None else answer
  if example.choices and answer in example.labels and example.answer not in ("yes", "no"):
    return example.choice_text(answer)
  return str(answer)


def step_by_step_prompt(example: Example) -> str:
  """Distilling Step-by-Step's inference input: only the label task is decoded."""
  return f"{PREDICT_PREFIX}{step_by_step_question(example)}"


def step_by_step(example: Example, rationale: str,
                 answer: Optional[str] = None) -> dict[Stage, TextPair]:
  """Distilling Step-by-Step's two tasks of one question: `predict: ` -> the
  label (the gold answer: its `--label_type gt`) and `explain: ` -> the rationale."""
  question = step_by_step_question(example)
  return {Stage.PREDICT: TextPair(f"{PREDICT_PREFIX}{question}",
                                  step_by_step_label(example, answer)),
          Stage.EXPLAIN: TextPair(f"{EXPLAIN_PREFIX}{question}", rationale.strip())}


# ------------------------------------------------- teacher explanations

@dataclasses.dataclass(frozen=True)
class OptionVerdict:
  label: str
  correct: bool
  reason: str  # The explanation with the verdict words stripped.
