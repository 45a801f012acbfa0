"""Seeded synthetic reasoning tasks whose rationales are known exactly.

Coin Flip follows Kojima et al. (2022): a coin starts heads up, some people
flip it and some do not; is it still heads up? Any number of people works.
Every generator is a pure function of a `numpy.random.Generator`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tinythinker_jax.data.schema import YES_NO_CHOICES, Example

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


def coin_flip_example(rng: np.random.Generator, index: int, min_people: int = 2,
                      max_people: int = 4) -> Example:
  """A Coin Flip Example (options `A. yes, B. no`) with its exact rationale."""
  flip = coin_flip(rng, int(rng.integers(min_people, max_people + 1)))
  return Example(id=f"coin_flip:{index}", question=flip.question, answer=flip.answer,
                 choices=YES_NO_CHOICES, rationale=flip.rationale,
                 source=f"generated:coin_flip:{index}", task="coin_flip")


def last_letter_example(rng: np.random.Generator, index: int, min_words: int = 2,
                        max_words: int = 4) -> Example:
  """Kojima et al.'s Last Letter Concatenation over first names."""
  count = int(rng.integers(min_words, max_words + 1))
  words = [NAMES[i] for i in rng.choice(len(NAMES), size=count, replace=False)]
  answer = "".join(w[-1] for w in words).lower()
  rationale = " ".join(f"The last letter of \"{w}\" is \"{w[-1]}\"." for w in words)
  rationale += f" Concatenating them is \"{answer}\"."
  return Example(id=f"last_letter:{index}",
                 question=(f"Take the last letters of each words in \"{' '.join(words)}\" "
                           "and concatenate them."),
                 answer=answer, rationale=rationale,
                 source=f"generated:last_letter:{index}", task="last_letter")
