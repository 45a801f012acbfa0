"""Few-shot prompts for a model evaluated with no training (the untrained row of a
real-task table): `k` solved training questions written before each test
question, in the form the evaluation then asks for.

- Generation (the vanilla prompt): each exemplar is the vanilla prompt (question,
  and lettered options where the task has them) and its gold answer on the next
  line; the test question's own prompt follows, so the model answers in kind.
- Rank classification (`reasoning.ranking`): each exemplar is the ranking prompt
  and its gold option's text as the ranked continuation, so the options are
  scored after `k` worked examples of the same cloze.

The exemplars are drawn once with a seed from the training split (never from the
evaluated split) and are the same for every test question, as few-shot baselines
are run (Fine-tune-CoT's and Distilling Step-by-Step's few-shot rows).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from tinythinker_jax import errors
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import formats, ranking

SEPARATOR = "\n\n"


def draw(train: Sequence[Example], k: int, seed: int = 0) -> list[Example]:
  """`k` training questions with answers, drawn with `seed` (in draw order)."""
  answered = [e for e in train if e.answer is not None]
  if k > len(answered):
    raise errors.UserError(f"few-shot: {k} exemplars asked, the training split has "
                           f"{len(answered)} answered questions")
  return random.Random(seed).sample(answered, k)


def generation_block(exemplars: Sequence[Example]) -> str:
  """The exemplars as vanilla prompts with their answers, then a blank line."""
  return "".join(f"{formats.vanilla(e).inputs}\n{formats.vanilla(e).targets}{SEPARATOR}"
                 for e in exemplars)


def rank_settings(exemplars: Sequence[Example],
                  settings: ranking.RankSettings = ranking.RankSettings()
                  ) -> ranking.RankSettings:
  """`settings` with the exemplars written before its prompt: each exemplar's
  ranking prompt followed by its gold option's text."""
  block = []
  for e in exemplars:
    gold = [c for c in e.choices if c.label == e.gold_label]
    if not gold:
      raise errors.UserError(f"{e.source or e.id}: a rank exemplar needs its gold option")
    block.append(settings.prompt.replace("{question}", e.question) +
                 settings.target.replace("{option}", gold[0].text) + SEPARATOR)
  return ranking.RankSettings(prompt="".join(block) + settings.prompt,
                              target=settings.target)


def with_block(examples: Sequence[Example], block: str) -> list[Example]:
  """The examples with `block` (`generation_block`) written before each
  question: the vanilla prompts built from them start with the exemplars."""
  return [dataclasses.replace(e, question=block + e.question) for e in examples]
