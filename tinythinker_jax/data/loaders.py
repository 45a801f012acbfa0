"""Loaders for the official file formats, each returning `list[Example]`.

Every loader names the file and line (or index) of a malformed record. Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Optional

from tinythinker_jax import errors, paths
from tinythinker_jax.data import arithmetic
from tinythinker_jax.data.schema import (YES_NO_CHOICES, Choice, DataError, Example,
                                         labelled, letter_labels)


def _read_json(path: str) -> Any:
  try:
    return json.loads(paths.as_path(path).read_text())
  except FileNotFoundError:
    raise errors.MissingFileError(f"{path}: not found") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


def _json_list(path: str, what: str = "a JSON list") -> Iterator[tuple[str, dict]]:
  """(`path[i]`, record) for every element of a file holding a JSON list."""
  data = _read_json(path)
  if not isinstance(data, list):
    raise DataError(f"{path}: expected {what}")
  for i, record in enumerate(data):
    where = f"{path}[{i}]"
    if not isinstance(record, dict):
      raise DataError(f"{where}: expected a JSON object")
    yield where, record


def _field(record: dict, key: str, where: str) -> Any:
  node = record
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      raise DataError(f"{where}: missing field {key!r}")
    node = node[part]
  return node


def _choices(raw: Any, where: str) -> tuple[Choice, ...]:
  if not isinstance(raw, list) or not raw:
    raise DataError(f"{where}: 'choices' must be a non-empty list")
  if all(isinstance(c, str) for c in raw):
    return labelled(raw)
  try:
    return tuple(Choice(str(c["label"]), str(c["text"])) for c in raw)
  except (KeyError, TypeError) as e:
    raise DataError(f"{where}: each choice needs 'label' and 'text' ({e})") from e


def load_arc_style_jsonl(path: str, task: str) -> list[Example]:
  """CommonsenseQA and OpenBookQA: `{id, question: {stem, choices}, answerKey}`."""
  examples = []
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    choices = _choices(_field(record, "question.choices", where), where)
    answer = record.get("answerKey")  # The official test files have no labels.
    if answer is not None:
      answer = str(answer)
      if answer not in {c.label for c in choices}:
        raise DataError(f"{where}: answerKey {answer!r} is not one of the choices")
    choices, answer, note = letter_labels(choices, answer)
    examples.append(Example(id=str(_field(record, "id", where)),
                            question=str(_field(record, "question.stem", where)),
                            answer=answer, choices=choices,
                            source=f"{where} ({note})" if note else where, task=task))
  return examples


def load_gsm8k_jsonl(path: str, task: str = "gsm8k") -> list[Example]:
  """Official GSM8K: `{question, answer: "<reasoning> #### <number>"}`."""
  examples = []
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    text = str(_field(record, "answer", where))
    if "####" not in text:
      raise DataError(f"{where}: answer has no '####' final answer")
    reasoning, final = text.rsplit("####", 1)
    examples.append(Example(id=f"{os.path.basename(path)}:{line_no}",
                            question=str(_field(record, "question", where)),
                            answer=final.strip().replace(",", ""),
                            rationale=reasoning.strip() or None, source=where, task=task))
  return examples


_AQUA_OPTION = re.compile(r"^\s*([A-E])\s*\)\s*(.*)$", re.S)


def load_aqua_json_lines(path: str, task: str = "aqua") -> list[Example]:
  """Official AQuA-RAT: one `{question, options: ["A)...", ...], rationale, correct}` per line."""
  examples = []
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    choices = []
    for option in _field(record, "options", where):
      match = _AQUA_OPTION.match(str(option))
      if not match:
        raise DataError(f"{where}: option {option!r} is not 'X)text'")
      choices.append(Choice(match.group(1), match.group(2).strip()))
    examples.append(Example(id=f"{os.path.basename(path)}:{line_no}",
                            question=str(_field(record, "question", where)),
                            answer=str(_field(record, "correct", where)).strip(),
                            choices=tuple(choices), rationale=record.get("rationale"),
                            source=where, task=task))
  return examples


def _number(value: Any) -> str:
  number = float(value)
  return str(int(number)) if number.is_integer() else repr(number)


def load_svamp_json(path: str, task: str = "svamp") -> list[Example]:
  """Official SVAMP: a list of `{ID, Body, Question, Equation, Answer, Type}`."""
  examples = []
  for where, record in _json_list(path):
    body = str(_field(record, "Body", where)).strip()
    question = str(_field(record, "Question", where)).strip()
    examples.append(Example(id=str(record.get("ID", where)),
                            question=f"{body} {question}".strip(),
                            answer=_number(_field(record, "Answer", where)),
                            rationale=record.get("Equation"), source=where, task=task))
  return examples


def load_dsbs_cqa_jsonl(path: str, task: str = "csqa") -> list[Example]:
  """CommonsenseQA as Distilling Step-by-Step releases it (`cqa/cqa_*.json`): one
  `{id, question, choices: [5 texts], answer: <the gold choice's text>}` a line.
  Choices are lettered A-E in their order."""
  examples = []
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    choices = _choices(_field(record, "choices", where), where)
    answer_text = str(_field(record, "answer", where)).strip()
    matches = [c.label for c in choices if c.text.strip() == answer_text]
    if not matches:
      raise DataError(f"{where}: answer {answer_text!r} is not one of the choices")
    examples.append(Example(id=str(_field(record, "id", where)),
                            question=str(_field(record, "question", where)),
                            answer=matches[0], choices=choices, source=where, task=task))
  return examples


def load_dsbs_svamp_jsonl(path: str, task: str = "svamp") -> list[Example]:
  """SVAMP as Distilling Step-by-Step releases it (`svamp/svamp_*.json`): one
  `{input, label: <an equation such as "( 84.0 / 2.0 )">}` a line; the answer is
  the equation's value. Ids are `<file name>:<line>` (the file has none)."""
  examples = []
  name = os.path.basename(str(path))
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    equation = str(_field(record, "label", where))
    value = arithmetic.arithmetic_value(equation)
    if value is None:
      raise DataError(f"{where}: label {equation!r} is not an arithmetic expression")
    question = " ".join(str(_field(record, "input", where)).split())
    examples.append(Example(id=f"{name}:{line_no}", question=question,
                            answer=arithmetic.format_number(value), rationale=equation,
                            source=where, task=task))
  return examples


def load_strategyqa_json(path: str, task: str = "strategyqa") -> list[Example]:
  """Official StrategyQA: a list of `{qid, question, answer: bool, facts, ...}`."""
  examples = []
  for where, record in _json_list(path):
    answer = _field(record, "answer", where)
    if not isinstance(answer, bool):
      raise DataError(f"{where}: 'answer' must be true or false")
    facts = record.get("facts")
    examples.append(Example(id=str(record.get("qid", where)),
                            question=str(_field(record, "question", where)),
                            answer="yes" if answer else "no", choices=YES_NO_CHOICES,
                            rationale=" ".join(facts) if facts else None, source=where,
                            task=task))
  return examples


def load_bigbench_task(path: str, task: str = "") -> list[Example]:
  """A BIG-bench `task.json` with multiple-choice `target_scores`.

  Choices keep the file's order and are labelled A, B, ...; a yes/no task
  (StrategyQA) keeps "yes"/"no" as the answer, and a target of the form
  "Yes. <explanation>" gives the rationale.
  """
  data = _read_json(path)
  name = task or str(data.get("name", os.path.basename(os.path.dirname(path))))
  examples = []
  for i, record in enumerate(_field(data, "examples", path)):
    where = f"{path}:examples[{i}]"
    scores = _field(record, "target_scores", where)
    if not isinstance(scores, dict) or not scores:
      raise DataError(f"{where}: 'target_scores' must be a non-empty object")
    best = max(scores.values())
    gold = [k for k, v in scores.items() if v == best]
    if len(gold) != 1:
      raise DataError(f"{where}: {len(gold)} choices share the top score")
    texts = list(scores)
    rationale = None
    target = record.get("target")
    if isinstance(target, str) and target.startswith(gold[0]):
      rationale = target[len(gold[0]):].lstrip(" .").strip() or None
    if {t.lower() for t in texts} == {"yes", "no"}:
      examples.append(Example(id=f"{name}:{i}", question=str(record["input"]).strip(),
                              answer=gold[0].lower(), choices=YES_NO_CHOICES,
                              rationale=rationale, source=where, task=name))
      continue
    choices = labelled(texts)
    examples.append(Example(id=f"{name}:{i}", question=str(record["input"]).strip(),
                            answer=choices[texts.index(gold[0])].label, choices=choices,
                            rationale=rationale, source=where, task=name))
  return examples


_FTC_CHOICES = re.compile(r"\s*Answer choices:\s*(.*?)\.?\s*$", re.S)
_FTC_OPTION = re.compile(r"\(([A-Z])\)\s*")

# Fine-tune-CoT's twelve tasks: file name and answer type.
FINETUNE_COT_TASKS = {
    "single_eq": "single_eq", "addsub": "addsub", "multiarith": "multiarith",
    "gsm8k": "gsm8k_test_only", "aqua": "aqua", "svamp": "svamp",
    "date_understanding": "date_understanding",
    "tracking_shuffled_objects": "tracking_shuffled_objects",
    "last_letter_concatenation": "last_letter_concatenation", "coin_flip": "coin_flip",
    "commonsense_qa": "commonsense_qa", "strategy_qa": "strategy_qa",
}


def split_answer_choices(question: str) -> tuple[str, tuple[Choice, ...]]:
  """Splits Fine-tune-CoT's `... Answer choices: (A) x, (B) y.` into stem and choices."""
  marker = question.rfind("Answer choices:")
  if marker < 0:
    return question, ()
  stem, tail = question[:marker].rstrip(), question[marker:]
  body = _FTC_CHOICES.match(tail).group(1)
  parts = _FTC_OPTION.split(body)[1:]
  choices = tuple(Choice(parts[i], parts[i + 1].strip().rstrip(",").strip())
                  for i in range(0, len(parts), 2))
  return stem, choices


def load_finetune_cot_task(path: str, task: str) -> list[Example]:
  """A Fine-tune-CoT task file: a list of `{question, answer}` (+ rationale/reasoning)."""
  examples = []
  for i, (where, record) in enumerate(_json_list(path, "a JSON list of {question, answer}")):
    question = str(_field(record, "question", where))
    answer = str(_field(record, "answer", where)).strip()
    stem, choices = split_answer_choices(question)
    if task in ("strategy_qa", "coin_flip"):
      answer, choices = answer.lower(), YES_NO_CHOICES
    elif task in ("single_eq", "addsub", "multiarith", "gsm8k", "svamp"):
      answer = _number(answer.replace(",", ""))
    rationale = record.get("rationale") or record.get("reasoning")
    examples.append(Example(id=f"{task}:{i}", question=stem, answer=answer,
                            choices=choices, rationale=rationale, source=where, task=task))
  return examples


def load_generic_mc_jsonl(path: str, task: str = "") -> list[Example]:
  """The documented generic multiple-choice JSONL schema, one object per line:

  `{"id": optional, "question": str, "choices": [{"label", "text"}] or [str, ...],
    "answer": label or choice text, "rationale": optional str}`
  """
  name = task or os.path.splitext(os.path.basename(path))[0]
  examples = []
  for line_no, record in paths.iter_jsonl(path):
    where = f"{path}:{line_no}"
    choices = _choices(_field(record, "choices", where), where)
    answer = record.get("answer")
    if answer is not None:
      answer = str(answer)
      labels = {c.label for c in choices}
      if answer not in labels:
        matches = [c.label for c in choices if c.text.strip() == answer.strip()]
        if len(matches) != 1:
          raise DataError(f"{where}: answer {answer!r} is neither a label nor exactly "
                          "one choice's text")
        answer = matches[0]
    choices, answer, note = letter_labels(choices, answer)
    examples.append(Example(id=str(record.get("id", f"{name}:{line_no}")),
                            question=str(_field(record, "question", where)),
                            answer=answer, choices=choices,
                            rationale=record.get("rationale"),
                            source=f"{where} ({note})" if note else where, task=name))
  return examples


def first_existing(folder: str, names: list[str]) -> Optional[str]:
  for name in names:
    path = str(paths.as_path(folder) / name)
    if paths.as_path(path).exists():
      return path
  return None
