"""Recorded rationales as a teacher: chains an LLM already wrote, read from a file
and turned into teacher records exactly as a live teacher's replies would be.

Two sources:

- any JSONL file, one object a line: `{"id": ..., "completion": "<raw reply>"}`
  (cut and split as below) or `{"id": ..., "rationale": "<reasoning>",
  "answer": "<its answer text>"}` (already split; `answer` optional, then read
  from the rationale's end). Several lines with one id are several samples (in
  file order); ids are the dataset's example ids.
- Distilling Step-by-Step's release (a folder holding `llm/{train,test}_CoT_<k>.json`
  beside `<name>_{train,test}.json`): PaLM-540B's completions, index-aligned
  with the lines of the source file (file k holds lines 1000k...).

A completion is cut at the first made-up continuation (`cut`, default `Q:`, as the
few-shot prompts start each new question), then split at its last "the answer
is": the reasoning before it is the rationale, the rest is the answer reply,
whose answer is read by the live teacher's extraction
(`answers.extract_teacher_answer`; an answer written as an arithmetic expression
counts as its value, as in "The answer is (16 * 17) * 4."). Lower-case option
letters "(d)" (the few-shot prompts' style) are read as the example's labels, and
an option whose text equals the gold option's (CommonsenseQA repeats an option's
text in a few questions) is the gold answer, as the release's text labels count it.

With `filter_answers` (Fine-tune-CoT) a chain is kept when its answer equals the
gold answer; without (Distilling Step-by-Step, `--label_type gt`) every chain with
reasoning is kept and the gold answer labels it. Both are counted in the
teacher's summary as a live teacher's are.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Optional, Sequence

import tqdm

from tinythinker_jax import errors, paths
from tinythinker_jax.data import loaders
from tinythinker_jax.data.arithmetic import arithmetic_value, format_number
from tinythinker_jax.data.schema import AnswerType, DataError, Example
from tinythinker_jax.reasoning import answers
from tinythinker_jax.teacher.finetune_cot import finetune_cot_outcome
from tinythinker_jax.teacher.outcomes import Outcome, drop
from tinythinker_jax.teacher.outcomes import provenance as make_provenance

TEMPLATE_VERSION = "recorded/v1"
# Where a recorded completion states its answer ("So the answer is (d) ...",
# "The answer is (84 / 2).", "Therefore, the answer is ...").
_ANSWER_PHRASE = re.compile(r"(?i)\b(?:so\s+|therefore,?\s+)?the\s+answer\s+is\b")
_LOWER_LABEL = re.compile(r"\(([a-z])\)")


@dataclasses.dataclass(frozen=True)
class RecordedSettings:
  """The recorded teacher (`TEACHER='recorded'`): where the chains are and how
  they are kept."""

  path: str = ""  # A JSONL file of chains or a Distilling Step-by-Step folder.
  # Fine-tune-CoT's answer filter; False keeps every chain with the gold label
  # (Distilling Step-by-Step).
  filter_answers: bool = True
  cut: tuple[str, ...] = ("Q:",)  # A completion ends at the first of these.
  max_per_question: Optional[int] = None  # The first N chains of a question.


@dataclasses.dataclass(frozen=True)
class RecordedChain:
  """One recorded sample: the reasoning and the reply that states its answer
  (empty when the file gives the rationale alone)."""

  rationale: str
  answer_text: str
  raw: str
  where: str


def split_completion(text: str, cut: Sequence[str] = ("Q:",)) -> tuple[str, str]:
  """(rationale, answer reply) of a raw completion: cut at the first of `cut`,
  then split at the last "the answer is"."""
  end = min((i for i in (text.find(c) for c in cut if c) if i >= 0), default=len(text))
  text = text[:end].strip()
  found = list(_ANSWER_PHRASE.finditer(text))
  if not found:
    return text, ""
  last = found[-1]
  return text[:last.start()].strip(), text[last.start():].strip()


def read_answer(answer_text: str, example: Example, answer_type: AnswerType
                ) -> Optional[str]:
  """The answer of a recorded reply, by the live teacher's extraction."""
  if not answer_text:
    return None
  if answer_type is AnswerType.LETTER:
    labels = set(example.labels)
    answer_text = _LOWER_LABEL.sub(
        lambda m: f"({m.group(1).upper()})" if m.group(1).upper() in labels else m.group(0),
        answer_text)
  if answer_type is AnswerType.NUMBER:
    # "The answer is (16 * 17) * 4." states its answer as an expression.
    phrase = _ANSWER_PHRASE.search(answer_text)
    span = answer_text[phrase.end():] if phrase else answer_text
    value = arithmetic_value(span.strip().split("\n")[0].strip().rstrip(".").strip())
    if value is not None:
      return format_number(value)
  found = answers.extract_teacher_answer(answer_text, answer_type,
                                         example.labels or answers.DEFAULT_LABELS,
                                         example.choices)
  gold = example.gold_label
  if (answer_type is AnswerType.LETTER and found is not None and gold is not None
      and found != gold and found in example.labels
      and example.choice_text(found).strip().lower() ==
      example.choice_text(gold).strip().lower()):
    # Two options with the gold text (CommonsenseQA has a few): the same answer.
    return gold
  return found


def _chain(record: dict[str, Any], where: str, cut: Sequence[str]) -> RecordedChain:
  if "completion" in record:
    raw = str(record["completion"])
    rationale, answer_text = split_completion(raw, cut)
    return RecordedChain(rationale, answer_text, raw, where)
  if "rationale" not in record:
    raise DataError(f"{where}: a recorded chain needs 'completion' or 'rationale'")
  raw = str(record["rationale"])
  if record.get("answer") is not None:
    return RecordedChain(raw.strip(), f"The answer is {record['answer']}", raw, where)
  rationale, answer_text = split_completion(raw, ())
  return RecordedChain(rationale, answer_text, raw, where)


def read_jsonl(path: str, cut: Sequence[str] = ("Q:",)) -> dict[str, list[RecordedChain]]:
  """Chains by example id from a JSONL file (see the module docstring)."""
  chains: dict[str, list[RecordedChain]] = {}
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    if "id" not in record:
      raise DataError(f"{where}: missing field 'id'")
    chains.setdefault(str(record["id"]), []).append(_chain(record, where, cut))
  return chains


_DSBS_LLM = re.compile(r"^(train|test|valid)_CoT_(\d+)\.json$")


def is_dsbs_folder(path: str) -> bool:
  folder = paths.as_path(path)
  return folder.is_dir() and (folder / "llm").is_dir()


def read_dsbs(folder: str, cut: Sequence[str] = ("Q:",)) -> dict[str, list[RecordedChain]]:
  """Chains by example id from Distilling Step-by-Step's layout: each
  `llm/<part>_CoT_<k>.json` list is aligned with the lines of `<name>_<part>.json`
  (read with the dataset's own loader, so ids equal the dataset's)."""
  root = paths.as_path(folder)
  parts: dict[str, list[tuple[int, Any]]] = {}
  for file in sorted((root / "llm").iterdir(), key=lambda p: p.name):
    match = _DSBS_LLM.match(file.name)
    if match:
      parts.setdefault(match.group(1), []).append((int(match.group(2)), file))
  if not parts:
    raise errors.MissingFileError(f"{root / 'llm'}: no <part>_CoT_<k>.json files")
  chains: dict[str, list[RecordedChain]] = {}
  for part, files in parts.items():
    sources = sorted(p for p in root.iterdir() if p.name.endswith(f"_{part}.json"))
    if len(sources) != 1:
      raise errors.MissingFileError(
          f"{root}: expected one <name>_{part}.json beside llm/ (found "
          f"{[p.name for p in sources]})")
    source = str(sources[0])
    with sources[0].open() as f:
      first = json.loads(f.readline() or "{}")
    examples = (loaders.load_dsbs_cqa_jsonl(source) if "choices" in first else
                loaders.load_dsbs_svamp_jsonl(source))
    completions: list[tuple[str, str]] = []
    for _, file in sorted(files):
      try:
        data = json.loads(file.read_text())
      except json.JSONDecodeError as e:
        raise DataError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from e
      if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON list of completions")
      completions += [(f"{file}[{i}]", str(text)) for i, text in enumerate(data)]
    if len(completions) != len(examples):
      raise DataError(f"{root / 'llm'}: {len(completions)} {part} completions for "
                      f"{len(examples)} lines of {source}")
    for example, (where, text) in zip(examples, completions):
      rationale, answer_text = split_completion(text, cut)
      chains.setdefault(example.id, []).append(
          RecordedChain(rationale, answer_text, text, where))
  return chains


def read_chains(path: str, cut: Sequence[str] = ("Q:",)) -> dict[str, list[RecordedChain]]:
  """Chains by example id from a JSONL file or a Distilling Step-by-Step folder."""
  if not path:
    raise errors.UserError("teacher='recorded' needs RecordedSettings.path (a JSONL "
                           "file of chains or a Distilling Step-by-Step folder)")
  if not paths.as_path(path).exists():
    raise errors.MissingFileError(f"{path}: not found (recorded chains)")
  return read_dsbs(path, cut) if is_dsbs_folder(path) else read_jsonl(path, cut)


def recorded_outcome(example: Example, answer_type: AnswerType,
                     chains: Sequence[RecordedChain], provenance: dict[str, Any],
                     filter_answers: bool = True) -> Outcome:
  """One question's recorded chains as a teacher's outcome (Fine-tune-CoT
  records): answer-filtered as a live teacher's samples, or every chain with
  reasoning kept under the gold label."""
  samples = [(i, c.rationale, read_answer(c.answer_text, example, answer_type),
              c.answer_text) for i, c in enumerate(chains)]
  if not chains:
    outcome = Outcome(samples=1)
    drop(outcome, example, 0, "no recorded chain", "")
    return outcome
  return finetune_cot_outcome(example, answer_type, samples, provenance, len(chains),
                              [{"recorded_from": c.where} for c in chains],
                              filter_answers=filter_answers)


def recorded_outcomes(examples: Iterable[Example], answer_type: AnswerType,
                      settings: RecordedSettings, progress: bool = False
                      ) -> tuple[list[Outcome], dict[str, Any]]:
  """Every example's outcome, and the settings the summary records."""
  chains = read_chains(settings.path, settings.cut)
  provenance = make_provenance(f"recorded chains: {settings.path}", TEMPLATE_VERSION,
                               {"filter_answers": settings.filter_answers,
                                "cut": list(settings.cut),
                                "max_per_question": settings.max_per_question})
  outcomes = []
  for example in tqdm.tqdm(examples, desc="teach (recorded)", unit="q",
                           disable=not progress):
    found = chains.get(example.id, [])[:settings.max_per_question]
    outcomes.append(recorded_outcome(example, answer_type, found, provenance,
                                     settings.filter_answers))
  return outcomes, dataclasses.asdict(settings)
