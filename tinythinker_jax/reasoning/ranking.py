"""Rank classification: a multiple-choice question answered by the option whose
text the model finds most likely, as small language models are evaluated
(lm-evaluation-harness's multiple-choice tasks; "cloze" scoring).

Each option is scored as a continuation of one prompt (`RankSettings.prompt`,
default `Question: {question}\\nAnswer:`; the options are not shown) by its
summed log-probability; `accuracy` takes the option with the highest sum and
`accuracy_per_token` the highest mean per token (the length-normalised
variant). Pure functions: the model's scores are handed in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tinythinker_jax import errors
from tinythinker_jax.data.schema import Example


@dataclasses.dataclass(frozen=True)
class RankSettings:
  """How options are ranked: the prompt (`{question}` is the question) and the
  scored continuation (`{option}` is the option's text)."""

  prompt: str = "Question: {question}\nAnswer:"
  target: str = " {option}"

  def check(self) -> None:
    if "{question}" not in self.prompt or "{option}" not in self.target:
      raise errors.UserError(
          f"RankSettings: prompt={self.prompt!r} needs '{{question}}' and "
          f"target={self.target!r} needs '{{option}}'")


def rank_requests(example: Example, settings: RankSettings = RankSettings()
                  ) -> list[tuple[str, str]]:
  """(prompt, continuation) for each of the example's options, in label order."""
  if not example.choices:
    raise errors.UserError(f"{example.source or example.id}: rank classification needs "
                           "options")
  prompt = settings.prompt.replace("{question}", example.question)
  return [(prompt, settings.target.replace("{option}", c.text)) for c in example.choices]


def _best(values: Sequence[float]) -> int:
  """The first index of the largest value."""
  return max(range(len(values)), key=lambda i: (values[i], -i))


def rank_record(example: Example, logprobs: Sequence[float],
                num_tokens: Sequence[int]) -> dict[str, Any]:
  """One question's ranking: the option chosen by the summed and by the
  per-token log-probability, and whether each is the gold option."""
  if len(logprobs) != len(example.choices) or len(num_tokens) != len(example.choices):
    raise ValueError(f"{example.id}: {len(logprobs)} scores for {len(example.choices)} options")
  per_token = [lp / max(n, 1) for lp, n in zip(logprobs, num_tokens)]
  labels = example.labels
  answer, answer_per_token = labels[_best(logprobs)], labels[_best(per_token)]
  gold = example.gold_label
  return {"id": example.id, "gold": gold, "answer": answer,
          "answer_per_token": answer_per_token, "correct": answer == gold,
          "correct_per_token": answer_per_token == gold,
          "logprobs": [float(v) for v in logprobs], "num_tokens": list(num_tokens)}


def summarize(records: Sequence[dict[str, Any]], settings: RankSettings) -> dict[str, Any]:
  n = max(len(records), 1)
  return {"accuracy": sum(r["correct"] for r in records) / n,
          "accuracy_per_token": sum(r["correct_per_token"] for r in records) / n,
          "count": len(records), "prompt": settings.prompt, "target": settings.target}
