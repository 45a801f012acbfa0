"""One example schema for every dataset, and the answer types of tasks."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional, Sequence

from tinythinker_jax import errors, paths


class AnswerType(enum.Enum):
  """How a task's answers are written, extracted and compared (docs/methods.md)."""

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


DataError = errors.DataError  # a dataset file does not have the expected format



# ------------------------------------------------------------------ run records
# The records stages hand each other through files (JSONL: `paths.write_jsonl`,
# `paths.iter_jsonl`); each reads back with `from_json`, whose errors name the
# file and line.

FINETUNE_COT = "finetune_cot"
TINYTHINKER = "tinythinker"
ANSWERS = "answers"  # a question with its gold answer, no rationale (answer-only students)


def _require(record: dict, keys: Sequence[str], where: str, what: str) -> None:
  missing = [k for k in keys if record.get(k) is None]
  if missing:
    raise DataError(f"{where}: not a {what} (no {missing[0]!r})")


@dataclasses.dataclass(frozen=True)
class RationaleRecord:
  """A kept teacher rationale (`records.jsonl` of `tinythinker teach`), or a
  student's own correct chain in the same shape (rejection sampling).

  Fine-tune-CoT's carry `rationale` and `answer`; TinyThinker's `label` (the
  option the rationale supports), `recall` (the key information) and
  `analyses` (one reason per option label). `extra` keeps the provenance
  details a method adds (the teacher's reply, the rendered text, errors of a
  noisy rule-based teacher, a relabelling).
  """

  id: str
  method: str
  example: Example
  sample_index: int = 0
  provenance: dict = dataclasses.field(default_factory=dict)
  rationale: Optional[str] = None
  answer: Optional[str] = None
  label: Optional[str] = None
  recall: Optional[str] = None
  analyses: Optional[dict] = None
  extra: dict = dataclasses.field(default_factory=dict)

  _FIELDS = ("id", "method", "example", "sample_index", "provenance", "rationale", "answer",
             "label", "recall", "analyses")

  def to_json(self) -> dict[str, Any]:
    out = {"id": self.id, "method": self.method, "example": self.example.to_json()}
    for name in ("rationale", "answer", "label", "recall", "analyses"):
      if getattr(self, name) is not None:
        out[name] = getattr(self, name)
    out.update(sample_index=self.sample_index, provenance=self.provenance, **self.extra)
    return out

  @classmethod
  def from_json(cls, record: dict, where: str = "record") -> "RationaleRecord":
    _require(record, ("id", "method", "example"), where, "rationale record")
    method = record["method"]
    if method == FINETUNE_COT:
      _require(record, ("rationale",), where, "Fine-tune-CoT record")
    elif method == TINYTHINKER:
      _require(record, ("recall", "analyses"), where, "TinyThinker record")
    elif method == ANSWERS:
      _require(record, ("answer",), where, "answer record")
    else:
      raise DataError(f"{where}: method {method!r} is not {FINETUNE_COT!r}, "
                      f"{TINYTHINKER!r} or {ANSWERS!r}")
    try:
      example = Example.from_json(record["example"])
    except (TypeError, KeyError) as e:
      raise DataError(f"{where}: its 'example' is not an example ({e})") from e
    return cls(id=str(record["id"]), method=method, example=example,
               sample_index=int(record.get("sample_index", 0)),
               provenance=dict(record.get("provenance") or {}),
               rationale=record.get("rationale"), answer=record.get("answer"),
               label=record.get("label"), recall=record.get("recall"),
               analyses=dict(record["analyses"]) if record.get("analyses") else None,
               extra={k: v for k, v in record.items() if k not in cls._FIELDS})


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """A self-reflection preference pair (`pairs.jsonl` of `tinythinker sample`):
  for `prompt`, `chosen` over `rejected`, with the sampling policy's (the DPO
  reference's) log-probabilities of both once scored."""

  stage: str  # 'recall' or 'analyze'
  example_id: str
  prompt: str
  chosen: str
  rejected: str
  chosen_source: str  # 'student' or 'teacher'
  option: Optional[str] = None  # the analysed option (analyze pairs)
  recall: Optional[str] = None  # the recall the analysis follows (analyze pairs)
  reference_chosen_logp: Optional[float] = None
  reference_rejected_logp: Optional[float] = None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict, where: str = "pair") -> "PreferencePair":
    _require(record, ("stage", "prompt", "chosen", "rejected"), where, "preference pair")
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{"example_id": "", "chosen_source": "",
                  **{k: v for k, v in record.items() if k in known}})


@dataclasses.dataclass(frozen=True)
class SampledChain:
  """One chain a student sampled for a question (`chains.jsonl`): `sampled` says
  which stage was sampled ('recall': the recall, the rest greedy; 'analyze': the
  analyses after a chosen recall)."""

  sampled: str
  recall: Optional[str]
  analyses: Optional[dict]
  answer: Optional[str]

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SampledQuestion:
  """A question's sampled chains, with its gold option."""

  id: str
  gold: Optional[str]
  chains: tuple[SampledChain, ...] = ()

  def to_json(self) -> dict[str, Any]:
    return {"id": self.id, "gold": self.gold, "chains": [c.to_json() for c in self.chains]}

  @classmethod
  def from_json(cls, record: dict, where: str = "question") -> "SampledQuestion":
    _require(record, ("id",), where, "sampled question")
    try:
      chains = tuple(SampledChain(c.get("sampled", ""), c.get("recall"), c.get("analyses"),
                                  c.get("answer")) for c in record.get("chains") or ())
    except AttributeError as e:
      raise DataError(f"{where}: its 'chains' are not objects ({e})") from e
    return cls(str(record["id"]), record.get("gold"), chains)


def read_records(path, kind):
  """Every record of a JSONL run file as `kind` (`RationaleRecord`,
  `PreferencePair`, `SampledQuestion`), errors naming the file and line."""
  return [kind.from_json(record, f"{path}:{line}") for line, record in paths.iter_jsonl(path)]
