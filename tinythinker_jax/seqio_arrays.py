"""Materialise seqio tasks into the TensorFlow-free array format training reads.

Runs on any host with seqio/TensorFlow; the output folder (one `.npy` per
feature of seqio's `EncDecFeatureConverter`, unpacked, fixed length) is what
`tinythinker_jax.data.arrays.ArrayDataset` memory-maps on accelerator hosts
that have no TensorFlow.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from tinythinker_jax import paths
from tinythinker_jax.data import arrays


class EmptySplitError(ValueError):
  """A task's split exists but holds no examples (e.g. the teacher kept none)."""


def materialize(task, split: str, feature_lengths: Mapping[str, int],
                output_dir: paths.PathLike, max_examples: Optional[int] = None) -> dict:
  """Writes `task`'s `split` as fixed-length features; returns the metadata."""
  import seqio  # pylint: disable=import-outside-toplevel
  if isinstance(task, str):
    task = seqio.get_mixture_or_task(task)
  lengths = {"inputs": int(feature_lengths["inputs"]),
             "targets": int(feature_lengths["targets"])}
  dataset = task.get_dataset(sequence_length=lengths, split=split, shuffle=False,
                             num_epochs=1, use_cached=False)
  converter = seqio.EncDecFeatureConverter(pack=False)
  rows: dict[str, list[np.ndarray]] = {name: [] for name in arrays.FEATURES}
  at_limit = 0
  for raw, converted in zip(dataset.as_numpy_iterator(),
                            converter(dataset, lengths).as_numpy_iterator()):
    for name in arrays.FEATURES:
      rows[name].append(converted[name])
    # Trimmed sequences end in EOS too, so count those that reach the limit.
    at_limit += int(len(raw["inputs"]) >= lengths["inputs"] or
                    len(raw["targets"]) >= lengths["targets"])
    if max_examples and len(rows["encoder_input_tokens"]) >= max_examples:
      break
  if not rows["encoder_input_tokens"]:
    raise EmptySplitError(f"task {task.name} has no {split} examples")
  features = {k: np.stack(v).astype(np.int32) for k, v in rows.items()}
  meta = {"task": task.name, "split": split, "feature_lengths": lengths,
          "examples_at_length_limit": at_limit}
  arrays.write_features(output_dir, features, meta)
  return dict(meta, num_examples=len(features["encoder_input_tokens"]),
              path=paths.absolute_str(output_dir))
