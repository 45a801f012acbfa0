"""Answer extraction, cleansing and metrics, as Fine-tune-CoT and TinyThinker do it.

Fine-tune-CoT: take the text after the last `-->` when present, otherwise the
whole text, and keep the last candidate of the task's kind: a choice letter
(`[A-E]` AQuA/CSQA, `[A-F]` Date, `[A-C]` Shuffled Objects: the example's
labels), a number `-?\\d+(\\.\\d+)?` after removing commas (compared as floats
with tolerance 1e-6), `yes`/`no` (lower-cased), or for Last Letter the whole
string with quotes, periods and white space removed.

TinyThinker: `the answer is option ([A-Z])\\.`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional, Sequence

from tinythinker_jax.data.schema import AnswerType

ANSWER_ARROW = "-->"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
YES_NO = re.compile(r"\b(yes|no)\b")
TINYTHINKER_ANSWER = re.compile(r"the answer is option ([A-Z])\.")
FLOAT_TOLERANCE = 1e-6


def answer_span(text: str) -> str:
  """The text after the last `-->`, or the whole text."""
  return text.rsplit(ANSWER_ARROW, 1)[1] if ANSWER_ARROW in text else text


def extract_answer(text: str, answer_type: AnswerType,
                   labels: Sequence[str] = ("A", "B", "C", "D", "E")) -> Optional[str]:
  """The predicted answer in canonical form, or None when there is no candidate."""
  span = answer_span(text)
  if answer_type is AnswerType.LETTER:
    found = re.findall("|".join(map(re.escape, labels)), span) if labels else []
    return found[-1] if found else None
  if answer_type is AnswerType.NUMBER:
    found = NUMBER.findall(span.replace(",", ""))
    return found[-1] if found else None
  if answer_type is AnswerType.YES_NO:
    found = YES_NO.findall(span.lower())
    return found[-1] if found else None
  cleaned = re.sub(r"[\"'.\s]", "", span)
  return cleaned.lower() or None


def answers_match(prediction: Optional[str], gold: Optional[str],
                  answer_type: AnswerType) -> bool:
  if prediction is None or gold is None:
    return False
  if answer_type is AnswerType.NUMBER:
    try:
      return abs(float(prediction) - float(gold.replace(",", ""))) <= FLOAT_TOLERANCE
    except ValueError:
      return False
  if answer_type is AnswerType.TEXT:
    return prediction == re.sub(r"[\"'.\s]", "", gold).lower()
  if answer_type is AnswerType.YES_NO:
    return prediction == gold.strip().lower()
  return prediction == gold.strip()


def extract_tinythinker_answer(text: str) -> Optional[str]:
  """The option letter of TinyThinker's `So the answer is option X.`."""
  found = TINYTHINKER_ANSWER.findall(text)
  return found[-1] if found else None


@dataclasses.dataclass(frozen=True)
class Scores:
  """Fine-tune-CoT's three metrics over a set of predictions."""

  count: int
  accuracy: float
  contains_answer: float  # The gold answer appears anywhere in the output.
  correct_format: float  # The output has `-->` followed by a parsable answer.

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _contains(text: str, gold: str, answer_type: AnswerType) -> bool:
  if answer_type is AnswerType.NUMBER:
    return any(answers_match(n, gold, answer_type)
               for n in NUMBER.findall(text.replace(",", "")))
  if answer_type is AnswerType.TEXT:
    return re.sub(r"[\"'.\s]", "", gold).lower() in re.sub(r"[\"'.\s]", "", text).lower()
  if answer_type is AnswerType.YES_NO:
    return gold.lower() in YES_NO.findall(text.lower())
  return re.search(rf"\b{re.escape(gold)}\b", text) is not None


def score(outputs: Iterable[str], golds: Iterable[str], answer_type: AnswerType,
          labels: Iterable[Sequence[str]] | None = None) -> Scores:
  outputs, golds = list(outputs), list(golds)
  if len(outputs) != len(golds):
    raise ValueError(f"{len(outputs)} outputs for {len(golds)} gold answers")
  label_sets = list(labels) if labels is not None else [("A", "B", "C", "D", "E")] * len(
      outputs)
  correct = contains = formatted = 0
  for text, gold, options in zip(outputs, golds, label_sets):
    prediction = extract_answer(text, answer_type, options)
    correct += answers_match(prediction, gold, answer_type)
    contains += _contains(text, gold, answer_type)
    formatted += ANSWER_ARROW in text and extract_answer(
        answer_span(text), answer_type, options) is not None
  n = max(len(outputs), 1)
  return Scores(len(outputs), correct / n, contains / n, formatted / n)
