"""The rule-based teacher: rationales derived by rule, exact or with a set error rate.

For tasks whose answer follows mechanically from the question, a solver reads
the question itself (not a stored answer) and writes the derivation in both
papers' formats: Fine-tune-CoT's step-by-step rationale and TinyThinker's key
information plus one reason per option. It serves:

| task | questions | steps |
|---|---|---|
| Coin Flip | `A coin is heads up. Ada flips the coin. ...` (generated, or Fine-tune-CoT's file) | each person's flip or not, with the coin's side after it |
| Tracking Shuffled Objects | BIG-bench's five templates (balls, gifts, positions, books, partners), any number of people | each swap, with the two people's items after it |
| Last Letter Concatenation | `Take the last letters of each words in "..."` (Fine-tune-CoT only: no options) | each word's last letter |

A noisy teacher (`RuleBasedSettings`) makes the mistakes real teachers make,
independently per sample: with `step_error_rate` it misreads each step of the
question (a flip as no flip and back, a swap between the wrong pair of
people, a wrong last letter) and reasons correctly from what it misread, so a
wrong step usually, but not always, leads to a wrong answer; with
`answer_error_rate` it states a wrong final answer after a correct
derivation. `num_samples` rationales per question (each with its own errors)
give Fine-tune-CoT's diverse reasoning something to choose from. The teaching
pipeline then filters them exactly as it filters an LLM's replies (answer
filtering; TinyThinker's one-correct-option, label and near-duplicate rules).
Every output is labelled rule-based, with the error rates.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

from tinythinker_jax import errors, seeds
from tinythinker_jax.data.schema import AnswerType, Example


@dataclasses.dataclass(frozen=True)
class RuleBasedSettings:
  """The rule-based teacher's samples and error rates (gin: `rule_based.RuleBasedSettings`)."""

  num_samples: int = 1  # rationales per question (for both methods)
  step_error_rate: float = 0.0  # each step of the question misread with this probability
  answer_error_rate: float = 0.0  # a wrong final answer after a correct derivation
  seed: int = 0

  def __post_init__(self):
    for name in ("step_error_rate", "answer_error_rate"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise errors.UserError(f"RuleBasedSettings.{name}={value}: a rate in [0, 1]")
    if self.num_samples < 1:
      raise errors.UserError(f"RuleBasedSettings.num_samples={self.num_samples}: >= 1")

  @property
  def exact(self) -> bool:
    return not (self.step_error_rate or self.answer_error_rate)


@dataclasses.dataclass(frozen=True)
class Derivation:
  """One teacher sample: the steps it wrote and the answer they reach."""

  rationale: str  # Fine-tune-CoT's rationale (the steps and a conclusion)
  answer: str  # in the task's answer space: an option label, yes/no, a word
  recall: Optional[str] = None  # TinyThinker's key information (multiple choice)
  analyses: Optional[dict[str, str]] = None  # one reason per option label
  misread_steps: int = 0
  wrong_answer: bool = False  # the answer was replaced after the derivation


Solver = Callable[[Example, np.random.Generator, float], Derivation]


# ------------------------------------------------------------------ Coin Flip

_COIN_START = re.compile(r"^\s*A coin is heads up\.")
_COIN_STEP = re.compile(r"([^.?!]+?) (does not flip|flips) the coin\.")


def solve_coin_flip(example: Example, rng: np.random.Generator,
                    step_error_rate: float) -> Derivation:
  steps = _COIN_STEP.findall(example.question)
  if not steps:
    raise errors.UserError(f"{example.source or example.id}: no 'X flips the coin.' steps")
  heads, parts, flips, misread = True, [], 0, 0
  for name, action in steps:
    flipped = action == "flips"
    if rng.random() < step_error_rate:
      flipped, misread = not flipped, misread + 1
    heads ^= flipped
    flips += flipped
    parts.append(f"{name.strip()} {'flips' if flipped else 'stays'} : "
                 f"{'heads' if heads else 'tails'} .")
  answer = "yes" if heads else "no"
  parity = (f"{flips} is {'even' if heads else 'odd'}, so the coin ends "
            f"{'heads' if heads else 'tails'} up")
  # Key information: how many people flip (a compact recall learns faster than
  # one that copies names); each option's reason derives the side from its parity.
  analyses = {"A": f"{parity}, so it is {'still' if heads else 'not'} heads up.",
              "B": f"{parity}, so 'no' is {'wrong' if heads else 'right'}."}
  return Derivation(" ".join(parts), answer, f"The coin is flipped {flips} times.",
                    analyses, misread)


# ------------------------------------------------- Tracking Shuffled Objects

_PEOPLE = re.compile(r"^\s*([A-Z][\w-]*(?:, [A-Z][\w-]*)*,? and [A-Z][\w-]*) (?:are|were) ")
_ASSIGNMENT = re.compile(
    r"^(?:and )?([A-Z][\w-]*) (?:has|gets|is playing|is dancing with|is holding|holds)"
    r" (?:an? )?(.+?)$")
_SWAP = re.compile(r"(?:First|Then|Finally|Next|After that), ([A-Z][\w-]*) and ([A-Z][\w-]*)"
                   r" (?:swap|trade|switch|exchange)")
_QUESTION = re.compile(r"At the end of the \w+, ([A-Z][\w-]*) (?:has|is playing|is dancing "
                       r"with|is holding|gets)")


def _norm(text: str) -> str:
  text = text.strip().rstrip(".").strip().lower()
  return re.sub(r"^(?:the|an?) ", "", text)


def parse_shuffled_objects(example: Example) -> tuple[list[str], dict[str, str],
                                                      list[tuple[str, str]], str]:
  """People, their starting items, the swaps in order, and the person asked about."""
  where = example.source or example.id
  people_match = _PEOPLE.match(example.question)
  if not people_match:
    raise errors.UserError(f"{where}: not a shuffled-objects question (no 'A, B, and C "
                           "are ...' opening)")
  people = re.split(r",? and |, ", people_match.group(1))
  head, _, rest = example.question.partition(":")
  start_text = rest.split("\n")[0].strip().rstrip(".")
  items: dict[str, str] = {}
  for part in re.split(r", (?:and )?", start_text):
    assignment = _ASSIGNMENT.match(part.strip())
    if not assignment:
      raise errors.UserError(f"{where}: cannot read the starting assignment {part!r}")
    items[assignment.group(1)] = assignment.group(2).strip()
  swaps = _SWAP.findall(example.question)
  asked = _QUESTION.search(example.question)
  if set(items) != set(people) or not swaps or not asked:
    raise errors.UserError(f"{where}: cannot read the people, swaps or question of this "
                           "shuffled-objects question")
  return people, items, swaps, asked.group(1)


def solve_shuffled_objects(example: Example, rng: np.random.Generator,
                           step_error_rate: float) -> Derivation:
  people, items, swaps, asked = parse_shuffled_objects(example)
  state = dict(items)
  parts, misread = [], 0
  for a, b in swaps:
    if rng.random() < step_error_rate and len(people) > 2:
      # The wrong pair: one of the two people replaced by someone else.
      others = [p for p in people if p not in (a, b)]
      if rng.random() < 0.5:
        a = others[int(rng.integers(len(others)))]
      else:
        b = others[int(rng.integers(len(others)))]
      misread += 1
    state[a], state[b] = state[b], state[a]
    parts.append(f"{a} and {b} swap : {a} {state[a]} , {b} {state[b]} .")
  final = state[asked]
  by_text = {_norm(c.text): c.label for c in example.choices}
  if _norm(final) not in by_text:
    raise errors.UserError(f"{example.source or example.id}: {asked}'s item {final!r} is "
                           "not one of the options")
  label = by_text[_norm(final)]
  conclusion = f"At the end , {asked} has {final} ."
  analyses = {}
  for choice in example.choices:
    if choice.label == label:
      analyses[choice.label] = f"{asked} ends with {final} , which is this option ."
    else:
      analyses[choice.label] = f"{asked} ends with {final} , not {choice.text.strip().rstrip('.')} ."
  trace = " ".join(parts + [conclusion])
  return Derivation(trace, label, trace, analyses, misread)


# ---------------------------------------------------------------- Last Letter

_LAST_LETTER = re.compile(r"Take the last letters of (?:each|the) words? in \"([^\"]+)\"")


def solve_last_letter(example: Example, rng: np.random.Generator,
                      step_error_rate: float) -> Derivation:
  match = _LAST_LETTER.search(example.question)
  if not match:
    raise errors.UserError(f"{example.source or example.id}: no 'Take the last letters of "
                           "each words in \"...\"'")
  letters, parts, misread = [], [], 0
  for word in match.group(1).split():
    letter = word[-1]
    if rng.random() < step_error_rate:
      letter = chr(ord("a") + (ord(letter.lower()) - ord("a") + 1 +
                               int(rng.integers(25))) % 26)
      misread += 1
    letters.append(letter.lower())
    parts.append(f"The last letter of \"{word}\" is \"{letter}\".")
  answer = "".join(letters)
  return Derivation(" ".join(parts) + f" Concatenating them is \"{answer}\".", answer,
                    misread_steps=misread)


SOLVERS: dict[str, tuple[Callable[[Example], bool], Solver]] = {
    "coin_flip": (lambda e: bool(_COIN_START.match(e.question)), solve_coin_flip),
    "shuffled_objects": (lambda e: bool(_PEOPLE.match(e.question) and
                                        _SWAP.search(e.question)), solve_shuffled_objects),
    "last_letter": (lambda e: bool(_LAST_LETTER.search(e.question)), solve_last_letter),
}


def solver_for(example: Example) -> tuple[str, Solver]:
  for name, (matches, solve) in SOLVERS.items():
    if matches(example):
      return name, solve
  raise errors.UserError(
      f"{example.source or example.id}: the rule-based teacher derives Coin Flip, "
      "Tracking Shuffled Objects and Last Letter questions only; this question is none of "
      "them (use an LLM teacher)")


def option_label(example: Example, answer: str) -> Optional[str]:
  """The option an answer names: a label, or an option's text (yes/no tasks);
  None without options."""
  if not example.choices:
    return None
  if answer in example.labels:
    return answer
  for choice in example.choices:
    if choice.text.strip().lower() == answer.strip().lower():
      return choice.label
  return None


def _wrong_answer(example: Example, answer_type: AnswerType, answer: str,
                  rng: np.random.Generator) -> str:
  if example.choices:
    right = option_label(example, answer)
    wrong = [c for c in example.choices if c.label != right]
    pick = wrong[int(rng.integers(len(wrong)))]
    return pick.text if answer_type is AnswerType.YES_NO else pick.label
  return answer[::-1] + "x"  # any other string


def derive(example: Example, answer_type: AnswerType, settings: RuleBasedSettings,
           sample_index: int) -> Derivation:
  """Sample `sample_index` of the teacher for `example` (seeded per example and
  sample): the answer is in the task's answer space (`option_label` maps it)."""
  _, solve = solver_for(example)
  rng = seeds.rng(settings.seed, f"rule_based/{example.id}", sample_index)
  derivation = solve(example, rng, settings.step_error_rate)
  if rng.random() < settings.answer_error_rate:
    derivation = dataclasses.replace(
        derivation, answer=_wrong_answer(example, answer_type, derivation.answer, rng),
        wrong_answer=True)
  return derivation
