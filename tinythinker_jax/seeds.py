"""Seeds derived from (seed, purpose, index), never by arithmetic.

`seed * 1000 + k` style derivations collide (seed 1, k 0 is seed 0, k 1000)
and tie unrelated random streams together. Here every stream is named: a
purpose string (its CRC32 is the stream's id) and integer indices, mixed by
`numpy.random.SeedSequence`. Device-side randomness folds indices into a JAX
key with `jax.random.fold_in` where it is drawn (`decoding.sample_decode`,
`Student.generate`).
"""

from __future__ import annotations

import zlib

import numpy as np


def _purpose_id(purpose: str) -> int:
  return zlib.crc32(purpose.encode("utf-8"))


def sequence(seed: int, purpose: str, *index: int) -> np.random.SeedSequence:
  """The SeedSequence of the stream `purpose` at `index` under `seed`."""
  return np.random.SeedSequence([int(seed), _purpose_id(purpose), *map(int, index)])


def rng(seed: int, purpose: str, *index: int) -> np.random.Generator:
  """A numpy Generator for the stream; independent streams for distinct arguments."""
  return np.random.default_rng(sequence(seed, purpose, *index))


def derive(seed: int, purpose: str, *index: int) -> int:
  """A 31-bit integer seed for the stream (for APIs that take an int)."""
  return int(sequence(seed, purpose, *index).generate_state(1)[0] >> 1)
