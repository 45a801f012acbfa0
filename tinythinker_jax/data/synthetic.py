"""Seeded synthetic reasoning tasks whose rationales are known exactly.

Coin Flip follows Kojima et al. (2022): a coin starts heads up, some people
flip it and some do not; is it still heads up? Any number of people works.
Every generator is a pure function of a `numpy.random.Generator`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Short, distinct first names; each is one or two SentencePiece pieces.
NAMES = ("Ada", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim",
         "Lea", "Max", "Ned", "Oda", "Pam", "Quin", "Ray", "Sue", "Tom", "Uma", "Val",
         "Wes", "Xia", "Yan", "Zoe")


@dataclasses.dataclass(frozen=True)
class CoinFlip:
  """One coin-flip question with its exact step-by-step rationale."""

  question: str
  answer: str  # "yes" or "no"
  steps: tuple[tuple[str, bool], ...]  # (name, flipped)

  @property
  def rationale(self) -> str:
    """The coin's state after each person: `Ada flips : tails . Ben stays : tails .`"""
    heads, parts = True, []
    for name, flipped in self.steps:
      heads ^= flipped
      parts.append(f"{name} {'flips' if flipped else 'stays'} : "
                   f"{'heads' if heads else 'tails'} .")
    return " ".join(parts)


def coin_flip(rng: np.random.Generator, num_people: int) -> CoinFlip:
  names = rng.choice(len(NAMES), size=num_people, replace=False)
  steps = tuple((NAMES[i], bool(rng.integers(2))) for i in names)
  sentences = ["A coin is heads up."]
  for name, flipped in steps:
    sentences.append(f"{name} flips the coin." if flipped else
                     f"{name} does not flip the coin.")
  sentences.append("Is the coin still heads up?")
  heads = sum(flipped for _, flipped in steps) % 2 == 0
  return CoinFlip(" ".join(sentences), "yes" if heads else "no", steps)
