"""Materialise seqio tasks into the TensorFlow-free array format training reads.

Runs on any host with seqio/TensorFlow; the output folder (one `.npy` per
feature of seqio's `EncDecFeatureConverter`, fixed length) is what
`tinythinker_jax.data.arrays.ArrayDataset` memory-maps on accelerator hosts
that have no TensorFlow. With `pack=True` the rows are seqio's own packing
(`EncDecFeatureConverter(pack=True)`: several examples per row, with
`*_segment_ids` and `*_positions`), made once here, so every epoch reads the
same packed rows in a new order (t5x packs a freshly shuffled stream each
epoch; rows fixed at materialisation keep batches a function of the step).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from tinythinker_jax import paths, tf_import
from tinythinker_jax.data import arrays, packing


class EmptySplitError(ValueError):
  """A task's split exists but holds no examples (e.g. the teacher kept none)."""


_BATCH = 1024


def materialize(task, split: str, feature_lengths: Mapping[str, int],
                output_dir: paths.PathLike, max_examples: Optional[int] = None,
                pack: bool = False) -> dict:
  """Writes `task`'s `split` as fixed-length (packed) features; returns the metadata
  (`num_examples` counts rows, `num_sequences` the examples in them)."""
  seqio, tf = tf_import.import_seqio()
  if isinstance(task, str):
    task = seqio.get_mixture_or_task(task)
  lengths = {"inputs": int(feature_lengths["inputs"]),
             "targets": int(feature_lengths["targets"])}
  dataset = task.get_dataset(sequence_length=lengths, split=split, shuffle=False,
                             num_epochs=1, use_cached=False)
  if max_examples:
    dataset = dataset.take(max_examples)
  dataset = dataset.cache()  # Read (and tokenized) once for both passes below.
  at_limit = num_sequences = 0
  # Both passes go in batches: numpy conversion per example is most of the cost.
  sizes = dataset.map(lambda ex: (tf.size(ex["inputs"]), tf.size(ex["targets"])))
  for inputs_len, targets_len in sizes.batch(_BATCH).as_numpy_iterator():
    # Trimmed sequences end in EOS too, so count those that reach the limit.
    at_limit += int(np.sum((inputs_len >= lengths["inputs"]) |
                           (targets_len >= lengths["targets"])))
    num_sequences += len(inputs_len)
  if not num_sequences:
    raise EmptySplitError(f"task {task.name} has no {split} examples")
  names = arrays.FEATURES + (packing.PACKING_FEATURES if pack else ())
  converter = seqio.EncDecFeatureConverter(pack=pack)
  rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
  converted = converter(dataset, lengths).map(lambda ex: {n: ex[n] for n in names})
  for batch in converted.batch(_BATCH).as_numpy_iterator():
    for name in names:
      rows[name].append(batch[name])
  features = {k: np.concatenate(v).astype(np.int32) for k, v in rows.items()}
  meta = {"task": task.name, "split": split, "feature_lengths": lengths,
          "examples_at_length_limit": at_limit, "packed": bool(pack),
          "num_sequences": num_sequences}
  arrays.write_features(output_dir, features, meta)
  return dict(meta, num_examples=len(features["encoder_input_tokens"]),
              path=paths.absolute_str(output_dir))
