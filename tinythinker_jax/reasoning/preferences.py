"""Self-reflection preference pairs (TinyThinker phase 2), from sampled chains.

Pure functions: chains come from `chains.run_staged`, randomness from a
seeded `numpy.random.Generator`.

Recall pairs: of the recalls sampled for a question, those whose greedy chain
reached the gold option are chosen, those reaching another option (or no
parsable answer) rejected; a string in both sets is removed from both. The
sets are balanced: when rejected outnumber chosen, the teacher's recalls are
added as chosen; then the smaller side is resampled (with replacement) up to
the larger, and the two are paired in order.

Analyze pairs (TinyThinker's `generate.py`): each distinct chosen recall of
a question's recall pairs is a pair row; chains are sampled after it (every
option's analysis at T=0.7, the summary greedy), and a chain that reached
the gold option is paired with one that predicted a wrong option P, on the
gold option's analysis and on P's (only the chain that predicted P gives P's
rejected analysis). See `analyze_pairs` for the balancing.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tinythinker_jax.data import schema
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import formats
from tinythinker_jax.reasoning.chains import ChainRun

STUDENT = "student"
TEACHER = "teacher"


PreferencePair = schema.PreferencePair  # the record `pairs.jsonl` holds


def _unique(texts: Sequence[str]) -> list[str]:
  seen, out = set(), []
  for text in texts:
    text = text.strip()
    if text and text not in seen:
      seen.add(text)
      out.append(text)
  return out


def _paired_indices(num_chosen: int, num_rejected: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Every item of each side once, the smaller side resampled up to the larger."""
  n = max(num_chosen, num_rejected)
  c_index, r_index = np.arange(num_chosen), np.arange(num_rejected)
  if num_chosen < n:
    c_index = np.concatenate([c_index, rng.choice(num_chosen, n - num_chosen)])
  if num_rejected < n:
    r_index = np.concatenate([r_index, rng.choice(num_rejected, n - num_rejected)])
  return c_index, r_index


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
  c_index, r_index = _paired_indices(len(chosen), len(rejected), rng)
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


@dataclasses.dataclass(frozen=True)
class PairRow:
  """A chosen recall whose analyses are sampled (TinyThinker's analyze pair row),
  with the analyses that stand in when no sampled chain reaches the gold option:
  those of the chain (or teacher record) the recall came from."""

  recall: str
  backup: Optional[dict[str, str]]
  source: str  # STUDENT or TEACHER


def pair_rows(example: Example, runs: Sequence[ChainRun], pairs: Sequence[PreferencePair],
              teacher_recalls: Sequence[str],
              teacher_analyses: Sequence[Optional[dict[str, str]]],
              limit: Optional[int] = None) -> list[PairRow]:
  """The distinct chosen recalls of a question's recall pairs, in order.

  A student recall's backup is the analyses of its own chain (which reached
  the gold option); a teacher recall's is the analyses the teacher wrote after
  it, for the same question.
  """
  rows: list[PairRow] = []
  seen: set[str] = set()
  for pair in pairs:
    recall = pair.chosen.strip()
    if pair.stage != "recall" or recall in seen:
      continue
    seen.add(recall)
    backup = None
    if pair.chosen_source == STUDENT:
      backup = next((r.analyses for r in runs if r.recall is not None and
                     r.recall.strip() == recall and r.answer == example.gold_label and
                     r.analyses), None)
    else:
      for text, analyses in zip(teacher_recalls, teacher_analyses):
        if formats.ensure_period(text).strip() == recall:
          backup = analyses
          break
    rows.append(PairRow(recall, dict(backup) if backup else None, pair.chosen_source))
  return rows[:limit] if limit is not None else rows


def _distinct_chains(runs: Sequence[ChainRun], labels: Sequence[str]) -> list[ChainRun]:
  seen, out = set(), []
  for run in runs:
    key = tuple(run.analyses.get(label, "") for label in labels)
    if key not in seen:
      seen.add(key)
      out.append(run)
  return out


def analyze_pairs(example: Example, row: PairRow, runs: Sequence[ChainRun],
                  rng: np.random.Generator,
                  max_pairs: Optional[int] = None) -> list[PreferencePair]:
  """TinyThinker's analyze pairs for one pair row, from chains sampled after it.

  Chains that reached the gold option are chosen; chains that predicted
  another option P (one they analysed) are rejected; chains with no answer
  are left out. Each set is made distinct on the whole tuple of analyses and
  tuples in both sets are dropped; with no rejected chain there are no pairs.
  The sets are balanced as recall pairs are: more chosen than rejected ->
  rejected resampled; no chosen -> the row's backup analyses; fewer chosen
  -> chosen resampled up to the rejected count. Each (chosen, rejected) chain
  pair gives two pairs: the gold option's analysis in both chains, and the
  option P that the rejected chain predicted. Pairs whose two texts are the
  same are dropped (they carry no preference).
  """
  gold, labels = example.gold_label, list(example.labels)
  usable = [r for r in runs if r.analyses]
  chosen = _distinct_chains([r for r in usable if r.answer == gold], labels)
  rejected = _distinct_chains([r for r in usable if r.answer is not None and
                               r.answer != gold and r.answer in r.analyses], labels)
  key = lambda r: tuple(r.analyses.get(label, "") for label in labels)  # noqa: E731
  both = {key(r) for r in chosen} & {key(r) for r in rejected}
  chosen = [r for r in chosen if key(r) not in both]
  rejected = [r for r in rejected if key(r) not in both]
  if not rejected:
    return []
  sources = [STUDENT] * len(chosen)
  if not chosen:
    if not row.backup or gold not in row.backup:
      return []
    chosen = [ChainRun("", gold, recall=row.recall, analyses=row.backup)]
    sources = [row.source]
  c_index, r_index = _paired_indices(len(chosen), len(rejected), rng)
  pairs = []
  for i, j in zip(c_index, r_index):
    good, bad = chosen[i], rejected[j]
    for option in dict.fromkeys([gold, bad.answer]):
      c_text, r_text = good.analyses.get(option, "").strip(), bad.analyses[option].strip()
      if not c_text or not r_text or c_text == r_text:
        continue
      pairs.append(PreferencePair("analyze", example.id,
                                  formats.analyze_input(example, row.recall, option),
                                  c_text, r_text, sources[i], option, row.recall))
  if max_pairs is not None and len(pairs) > max_pairs:
    keep = np.sort(rng.choice(len(pairs), max_pairs, replace=False))
    pairs = [pairs[k] for k in keep]
  return pairs
