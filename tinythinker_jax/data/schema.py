"""One example schema for every dataset, and the answer types of tasks."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional, Sequence

from tinythinker_jax import errors


class AnswerType(enum.Enum):
  """How a task's answers are written, extracted and compared (METHODS.md)."""

  LETTER = "letter"  # A multiple-choice label: CSQA, OBQA, AQuA, Date, Shuffled.
  NUMBER = "number"  # Compared as floats with tolerance 1e-6: the math tasks.
  YES_NO = "yes_no"  # StrategyQA, Coin Flip.
  TEXT = "text"  # Last Letter: compared after removing quotes, periods, spaces.


@dataclasses.dataclass(frozen=True)
class Choice:
  label: str
  text: str


@dataclasses.dataclass(frozen=True)
class Example:
  """A question with its gold answer.

  `answer` is written in the task's answer type: a label such as "C" for
  multiple-choice tasks, "yes"/"no", a number ("43"), or text ("yajo").
  `choices` are the labelled options where a task has them (yes/no tasks get
  `A. yes, B. no` for TinyThinker's option-by-option format). `source` says
  where the example came from (`file:line` or a generator and seed).
  """

  id: str
  question: str
  answer: Optional[str]
  choices: tuple[Choice, ...] = ()
  rationale: Optional[str] = None
  source: str = ""
  task: str = ""

  @property
  def labels(self) -> tuple[str, ...]:
    return tuple(c.label for c in self.choices)

  @property
  def gold_label(self) -> Optional[str]:
    """The label of the gold choice (for yes/no tasks, the matching option)."""
    if self.answer is None or not self.choices:
      return None
    if self.answer in self.labels:
      return self.answer
    for choice in self.choices:
      if choice.text.strip().lower() == self.answer.strip().lower():
        return choice.label
    return None

  def choice_text(self, label: str) -> str:
    for choice in self.choices:
      if choice.label == label:
        return choice.text
    raise KeyError(f"example {self.id}: no choice labelled {label!r}")

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record["choices"] = [dataclasses.asdict(c) for c in self.choices]
    return record

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "Example":
    record = dict(record)
    record["choices"] = tuple(Choice(**c) for c in record.get("choices") or ())
    return cls(**record)


def labelled(texts: Sequence[str], start: str = "A") -> tuple[Choice, ...]:
  return tuple(Choice(chr(ord(start) + i), t) for i, t in enumerate(texts))


YES_NO_CHOICES = labelled(["yes", "no"])


def letter_labels(choices: Sequence[Choice], answer: Optional[str]
                  ) -> tuple[tuple[Choice, ...], Optional[str], str]:
  """Choices relabelled A, B, C, ... in their order, with the answer mapped.

  Files label options `1`..`4` (parts of ARC), `a`..`d` or otherwise; every
  format and extractor here reads letters. Returns the choices, the answer and
  a note recording the original labels (empty when they were already A, B, ...).
  """
  choices = tuple(choices)
  letters = labelled([c.text for c in choices])
  if tuple(c.label for c in choices) == tuple(c.label for c in letters):
    return choices, answer, ""
  mapping = {c.label: l.label for c, l in zip(choices, letters)}
  note = "labels " + ",".join(mapping) + " -> " + ",".join(mapping.values())
  return letters, mapping.get(answer, answer) if answer is not None else None, note


class DataError(errors.UserError):
  """A dataset file does not have the expected format; names file and line."""

