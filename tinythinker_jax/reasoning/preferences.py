"""Self-reflection preference pairs (TinyThinker phase 2), from sampled chains.

Pure functions: chains come from `chains.run_staged`, randomness from a
seeded `numpy.random.Generator`.

Recall pairs: of the recalls sampled for a question, those whose greedy chain
reached the gold option are chosen, those reaching another option (or no
parsable answer) rejected; a string in both sets is removed from both. The
sets are balanced: when rejected outnumber chosen, the teacher's recalls are
added as chosen; then the smaller side is resampled (with replacement) up to
the larger, and the two are paired in order.

Analyze pairs: for a chosen recall, sampled per-option analyses are split by
whether their chain reached the gold option, for the gold option and each
wrongly predicted option, and paired the same way (the teacher's analysis
fills in chosen ones when the student has none).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import formats
from tinythinker_jax.reasoning.chains import ChainRun

STUDENT = "student"
TEACHER = "teacher"


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  stage: str  # 'recall' or 'analyze'
  example_id: str
  prompt: str
  chosen: str
  rejected: str
  chosen_source: str  # STUDENT or TEACHER
  option: Optional[str] = None  # the analysed option (analyze pairs)
  recall: Optional[str] = None  # the recall the analysis follows (analyze pairs)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _unique(texts: Sequence[str]) -> list[str]:
  seen, out = set(), []
  for text in texts:
    text = text.strip()
    if text and text not in seen:
      seen.add(text)
      out.append(text)
  return out


def balance(chosen: Sequence[str], rejected: Sequence[str], fill: Sequence[str],
            rng: np.random.Generator, max_pairs: Optional[int] = None
            ) -> list[tuple[str, str, str]]:
  """(chosen, rejected, chosen_source) triples; see the module docstring."""
  chosen, rejected, fill = _unique(chosen), _unique(rejected), _unique(fill)
  both = set(chosen) & set(rejected)
  chosen = [c for c in chosen if c not in both]
  rejected = [r for r in rejected if r not in both]
  if not rejected:
    return []  # Nothing to move away from.
  sources = [STUDENT] * len(chosen)
  for text in fill:
    if len(chosen) >= len(rejected):
      break
    if text not in chosen and text not in rejected:
      chosen.append(text)
      sources.append(TEACHER)
  if not chosen:
    return []
  n = max(len(chosen), len(rejected))
  c_index = np.arange(len(chosen))
  r_index = np.arange(len(rejected))
  if len(chosen) < n:
    c_index = np.concatenate([c_index, rng.choice(len(chosen), n - len(chosen))])
  if len(rejected) < n:
    r_index = np.concatenate([r_index, rng.choice(len(rejected), n - len(rejected))])
  triples = [(chosen[i], rejected[j], sources[i]) for i, j in zip(c_index, r_index)]
  if max_pairs is not None and len(triples) > max_pairs:
    keep = np.sort(rng.choice(len(triples), max_pairs, replace=False))
    triples = [triples[k] for k in keep]
  return triples


def recall_pairs(example: Example, runs: Sequence[ChainRun],
                 teacher_recalls: Sequence[str], rng: np.random.Generator,
                 max_pairs: Optional[int] = None) -> list[PreferencePair]:
  gold = example.gold_label
  chosen = [r.recall for r in runs if r.recall is not None and r.answer == gold]
  rejected = [r.recall for r in runs if r.recall is not None and r.answer != gold]
  fill = [formats.ensure_period(t) for t in teacher_recalls]
  prompt = formats.recall_input(example)
  return [PreferencePair("recall", example.id, prompt, c, r, source)
          for c, r, source in balance(chosen, rejected, fill, rng, max_pairs)]


def chosen_recalls(example: Example, runs: Sequence[ChainRun],
                   teacher_recalls: Sequence[str], limit: int) -> list[str]:
  """Distinct recalls that led to the gold option (teacher recalls if none did)."""
  found = _unique([r.recall for r in runs if r.recall is not None and
                   r.answer == example.gold_label])
  if not found:
    found = _unique([formats.ensure_period(t) for t in teacher_recalls])
  return found[:limit]


def analyze_pairs(example: Example, recall: str, runs: Sequence[ChainRun],
                  teacher_analyses: Optional[dict[str, str]], rng: np.random.Generator,
                  max_pairs_per_option: Optional[int] = None) -> list[PreferencePair]:
  """Pairs for the gold option and every wrongly predicted option after `recall`."""
  gold = example.gold_label
  wrong = sorted({r.answer for r in runs if r.answer is not None and r.answer != gold})
  pairs = []
  for option in [gold] + wrong:
    chosen = [r.analyses[option] for r in runs if r.analyses and r.answer == gold]
    rejected = [r.analyses[option] for r in runs if r.analyses and r.answer != gold]
    fill = [teacher_analyses[option]] if teacher_analyses and option in \
        teacher_analyses else []
    prompt = formats.analyze_input(example, recall, option)
    pairs.extend(PreferencePair("analyze", example.id, prompt, c, r, source, option,
                                recall)
                 for c, r, source in balance(chosen, rejected, fill, rng,
                                             max_pairs_per_option))
  return pairs
