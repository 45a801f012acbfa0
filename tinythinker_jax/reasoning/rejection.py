"""Rejection-sampling fine-tuning data (STaR, Zelikman et al. 2022; RFT, Yuan et al. 2023).

The baseline that separates what self-reflection's preference loss adds from
what the student's own correct chains add: from the same sampled chains that
build the preference pairs (`tinythinker sample` stores them with each
question, `chains.jsonl`), keep the chains that reached the gold option and
train on them with the ordinary three-stage loss. Pure functions; the records
are `RationaleRecord`s of TinyThinker's shape, so the seqio tasks,
materialisation and phase-1 training read them as they read a teacher's.

Kept: chains whose summary names the gold option and that analysed every
option; one per distinct (recall, analyses); at most `max_per_question`
(first sampled first). STaR's "rationalization" (re-asking with the answer
as a hint for questions never solved) is not done: the student is never
given the answer.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from tinythinker_jax.data.schema import (TINYTHINKER, Example, RationaleRecord,
                                         SampledChain, SampledQuestion)

SOURCE = "the student's own sampled chain that reached the gold option (rejection sampling)"


def correct_chains(example: Example, chains: Iterable[SampledChain],
                   max_per_question: Optional[int] = None) -> list[SampledChain]:
  """The distinct complete chains that reached the gold option, in order."""
  gold, labels = example.gold_label, tuple(example.labels)
  kept, seen = [], set()
  for chain in chains:
    analyses = chain.analyses or {}
    if chain.answer != gold or not (chain.recall or "").strip():
      continue
    if any(not (analyses.get(label) or "").strip() for label in labels):
      continue
    key = (chain.recall.strip(), tuple(analyses[label].strip() for label in labels))
    if key in seen:
      continue
    seen.add(key)
    kept.append(chain)
    if max_per_question is not None and len(kept) >= max_per_question:
      break
  return kept


def records(examples: Sequence[Example], sampled: Sequence[SampledQuestion],
            max_per_question: Optional[int] = None,
            provenance: Optional[dict[str, Any]] = None) -> list[RationaleRecord]:
  """TinyThinker records of every question's correct chains.

  Questions are matched by id; a sampled question not among `examples` is an
  error (the samples belong to another dataset).
  """
  by_id = {e.id: e for e in examples}
  out = []
  for question in sampled:
    example = by_id.get(question.id)
    if example is None:
      raise KeyError(f"sampled question {question.id!r} is not among the examples")
    for index, chain in enumerate(correct_chains(example, question.chains,
                                                 max_per_question)):
      out.append(RationaleRecord(
          id=example.id, method=TINYTHINKER, example=example, sample_index=index,
          provenance=dict(provenance or {}, teacher=SOURCE, sampled_stage=chain.sampled),
          label=example.gold_label, recall=chain.recall.strip(),
          analyses={l: chain.analyses[l].strip() for l in example.labels}))
  return out
