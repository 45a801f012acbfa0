"""Compute accounting: the model FLOPs and tokens that a run spends.

Every training run (both phases) keeps running totals of its steps, real
(non-padding) tokens, examples and model FLOPs in each checkpoint's meta (so
a resumed run continues the count, never restarts it), in `metrics.jsonl`
(`compute/*`) and, when it ends, in `<model_dir>/compute.json`. Sampling and
evaluation record theirs per finished shard (`shards.run_sharded`), so a
resumed job counts each shard once.

What is counted (`models.flops`), the same way for training and sampling: the
work each jitted call does on its padded shapes.
- training: 6·N per token plus attention, on the batch shapes as computed
  (padding included: the step does that work), phase 1 or preference pairs;
- sampling: every row of each decoding call (rows that only fill the batch
  too) through the encoder (or the prefill) at the call's padded length, then
  the decode steps the call ran (to its longest row's EOS; a beam search runs
  all `max_length`), plus the forward passes that score sequences (the
  reference log-probs) at their padded shapes. (Before, sampling counted only
  each row's tokens up to its EOS while training counted padding, which
  favoured the sampling-heavy method in a compute match.) `sample_tokens`
  still counts the useful tokens: prompts and tokens generated up to EOS.

A training budget (`TrainSettings.train_flops` or `train_tokens`) is turned
into a step count before training starts (`steps_for_budget`): batches are a
pure function of (seed, step), so the count is exact and a resumed run
trains to the same step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from tinythinker_jax import paths

COMPUTE_FILE = "compute.json"


@dataclasses.dataclass
class Compute:
  """Totals of one run or stage; `+` adds two (a pipeline's stages)."""

  train_steps: int = 0
  train_examples: float = 0.0
  train_tokens: float = 0.0  # real (non-padding) input and target tokens
  train_flops: float = 0.0
  sample_flops: float = 0.0  # decoding and scoring
  sample_tokens: float = 0.0  # prompt tokens encoded plus tokens generated or scored
  wall_seconds: float = 0.0

  def __add__(self, other: "Compute") -> "Compute":
    return Compute(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                      for f in dataclasses.fields(self)})

  @property
  def total_flops(self) -> float:
    return self.train_flops + self.sample_flops

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["total_flops"] = self.total_flops
    return out

  @classmethod
  def from_json(cls, value: Optional[Mapping[str, Any]]) -> "Compute":
    value = value or {}
    return cls(**{f.name: type(f.default)(value.get(f.name, f.default))
                  for f in dataclasses.fields(cls)})


def read(directory: paths.PathLike) -> Compute:
  """A run folder's `compute.json` (zeros when it has none)."""
  path = paths.as_path(directory) / COMPUTE_FILE
  return Compute.from_json(paths.read_json(path) if path.exists() else None)


def write(directory: paths.PathLike, compute: Compute, **extra: Any) -> None:
  paths.write_json(paths.as_path(directory) / COMPUTE_FILE,
                   dict(compute.to_json(), **extra), indent=1)


def format_flops(flops: float) -> str:
  """FLOPs with an SI prefix: `3.2 TFLOP`."""
  for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if abs(flops) >= scale:
      return f"{flops / scale:.3g} {prefix}FLOP"
  return f"{flops:.3g} FLOP"
