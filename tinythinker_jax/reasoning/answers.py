"""Answer extraction, cleansing and metrics, as Fine-tune-CoT and TinyThinker do it.

Fine-tune-CoT's reference evaluator picks one candidate of the task's kind:

- with no answer prefix (the teacher's step 2, whose prompt already ends in
  "Therefore, the answer is", and the vanilla student) the *first* candidate;
- with the prefix (`-->` for Fine-tune-CoT students) the first candidate after
  its first occurrence, and the *last* candidate when the prefix is missing.

Candidates: a choice label (the example's labels), a number
`-?\\d+(\\.\\d+)?` after removing commas (compared as floats with tolerance
1e-6), `yes`/`no` (lower-cased), or for Last Letter the whole string with
quotes, periods and white space removed.

Two corrections of the reference, both for real chat replies: labels are
matched as whole tokens (its bare `[A-E]` reads the B of "Because"), and the
article "A" / pronoun "I" starting a phrase ("A fox would...") is not a label.
When a multiple-choice reply names no label, the option whose text it names
first (or last, by the same rule) is the answer.

TinyThinker: `the answer is option ([A-Z])\\.`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Optional, Sequence

from tinythinker_jax.data.schema import AnswerType, Choice

ANSWER_ARROW = "-->"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
YES_NO = re.compile(r"\b(yes|no)\b")
TINYTHINKER_ANSWER = re.compile(r"the answer is option ([A-Z])\.")
FLOAT_TOLERANCE = 1e-6
DEFAULT_LABELS = ("A", "B", "C", "D", "E")

# "A" or "I" followed by a lower-case word is the article or the pronoun, unless
# the word is one that follows a label ("A is correct", "A because ...").
_LABEL_VERBS = ("is", "was", "would", "seems", "appears", "because", "since", "as",
                "and", "or", "fits", "matches", "best", "makes", "correctly")


@functools.lru_cache(maxsize=256)
def _label_pattern(labels: tuple[str, ...]) -> re.Pattern:
  alternatives = "|".join(map(re.escape, sorted(labels, key=len, reverse=True)))
  # A label is a whole token: not inside a word, not glued to a digit, and not
  # an apostrophe's word ("A's").
  return re.compile(rf"(?<![\w'’])({alternatives})(?![\w'’])")


_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_LABEL_CUE = re.compile(r"(?:\(|\b(?:option|choice|answer is|is))\s*\**\s*$", re.I)


def label_candidates(text: str, labels: Sequence[str]) -> list[tuple[int, str]]:
  """(position, label) of every whole-token label mention, in order."""
  found = []
  for match in _label_pattern(tuple(labels)).finditer(text):
    label = match.group(1)
    if label in ("A", "I"):
      word = _WORD_AFTER.match(text, match.end())
      if (word is not None and word.group(1) not in _LABEL_VERBS
          and not _LABEL_CUE.search(text[max(0, match.start() - 20):match.start()])):
        continue
    found.append((match.start(), label))
  return found


def option_text_candidates(text: str, choices: Sequence[Choice]) -> list[tuple[int, str]]:
  """(position, label) of every mention of an option's text (case-insensitive,
  whole words); where two options' texts match at one place, the longer wins."""
  lowered = text.lower()
  found: dict[int, tuple[int, str]] = {}
  for choice in choices:
    phrase = choice.text.strip().lower().rstrip(".")
    if not phrase:
      continue
    for match in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", lowered):
      best = found.get(match.start())
      if best is None or len(phrase) > best[0]:
        found[match.start()] = (len(phrase), choice.label)
  return sorted((pos, label) for pos, (_, label) in found.items())


def _candidates(text: str, answer_type: AnswerType, labels: Sequence[str],
                choices: Sequence[Choice]) -> list[str]:
  if answer_type is AnswerType.LETTER:
    found = label_candidates(text, labels) if labels else []
    if not found and choices:
      found = option_text_candidates(text, choices)
    return [label for _, label in found]
  if answer_type is AnswerType.NUMBER:
    return NUMBER.findall(text.replace(",", ""))
  if answer_type is AnswerType.YES_NO:
    return YES_NO.findall(text.lower())
  cleaned = re.sub(r"[\"'.\s]", "", text).lower()
  return [cleaned] if cleaned else []


def answer_span(text: str, prefix: Optional[str] = ANSWER_ARROW) -> tuple[str, bool]:
  """The text to read the answer from, and whether to take its first candidate
  (the reference evaluator's rule; see the module docstring)."""
  if prefix is None:
    return text, True
  index = text.find(prefix)
  if index == -1:
    return text, False
  return text[index + len(prefix):], True


def extract_answer(text: str, answer_type: AnswerType,
                   labels: Sequence[str] = DEFAULT_LABELS, *,
                   prefix: Optional[str] = ANSWER_ARROW,
                   choices: Sequence[Choice] = ()) -> Optional[str]:
  """The predicted answer in canonical form, or None when there is no candidate.

  `prefix`: the answer prefix the output should contain (`-->` for
  Fine-tune-CoT students), or None for replies that are the answer itself
  (the teacher's step 2, the vanilla student). `choices`: the example's
  options, whose texts are matched when no label is found.
  """
  span, first = answer_span(text, prefix)
  found = _candidates(span, answer_type, tuple(labels), tuple(choices))
  if not found:
    return None
  return found[0] if first else found[-1]


# Where a teacher's reply states its answer: Fine-tune-CoT's step-2 trigger,
# which chat models often repeat, and the student format's arrow.
TEACHER_TRIGGER = re.compile(
    r"(?i)\b(?:therefore,?\s+)?the\s+(?:correct\s+|final\s+|best\s+)?answer\s+is\b|-->")


def extract_teacher_answer(text: str, answer_type: AnswerType,
                           labels: Sequence[str] = DEFAULT_LABELS,
                           choices: Sequence[Choice] = ()) -> Optional[str]:
  """The answer of a teacher's reply to "...Therefore, the answer is": the
  first candidate (Fine-tune-CoT's evaluator), read after the trigger when the
  reply repeats it ("The correct answer is (E) airport. Drawstring bags ..." -> E)."""
  trigger = TEACHER_TRIGGER.search(text)
  span = text[trigger.end():] if trigger else text
  found = extract_answer(span, answer_type, labels, prefix=None, choices=choices)
  if found is None and trigger:
    found = extract_answer(text, answer_type, labels, prefix=None, choices=choices)
  return found


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
  contains_answer: float  # The gold answer is one of the output's candidates.
  correct_format: float  # The output has `-->` followed by a parsable answer.

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def score(outputs: Iterable[str], golds: Iterable[str], answer_type: AnswerType,
          labels: Iterable[Sequence[str]] | None = None) -> Scores:
  outputs, golds = list(outputs), list(golds)
  if len(outputs) != len(golds):
    raise ValueError(f"{len(outputs)} outputs for {len(golds)} gold answers")
  label_sets = list(labels) if labels is not None else [DEFAULT_LABELS] * len(outputs)
  correct = contains = formatted = 0
  for text, gold, options in zip(outputs, golds, label_sets):
    prediction = extract_answer(text, answer_type, options)
    correct += answers_match(prediction, gold, answer_type)
    span, _ = answer_span(text)
    contains += any(answers_match(c, gold, answer_type)
                    for c in _candidates(span, answer_type, tuple(options), ()))
    formatted += ANSWER_ARROW in text and extract_answer(
        text, answer_type, options) is not None
  n = max(len(outputs), 1)
  return Scores(len(outputs), correct / n, contains / n, formatted / n)
