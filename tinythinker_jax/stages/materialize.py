"""A seqio task's splits as the arrays training reads (`tinythinker materialize`).

`prepare_data` is what `tinythinker train` calls first: it materialises each
task of `MIXTURE_OR_TASK_NAME` (split by split) into `<data_dir>/<task>/<split>`
(needs seqio/TensorFlow) and records the mixture's expansion (its tasks and
their mixing rates) in a manifest, so later runs, and hosts without TensorFlow,
read the arrays directly. With `pack=True` (gin: `PACK`) the arrays are seqio's
packed rows (`EncDecFeatureConverter(pack=True)`); the manifest records which,
and a change of `PACK` materialises again.

`materialize` writes one task's split: one `.npy` per feature of seqio's
`EncDecFeatureConverter`, fixed length, which `data.arrays.ArrayDataset`
memory-maps on accelerator hosts that have no TensorFlow. Packed rows
(several examples per row, with `*_segment_ids` and `*_positions`) are made
once here, so every epoch reads the same packed rows in a new order (t5x packs
a freshly shuffled stream each epoch; rows fixed at materialisation keep
batches a function of the step).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from tinythinker_jax import errors, paths, shards, tf_import
from tinythinker_jax.data import arrays, packing

MANIFEST = "manifest.json"


def _expand(name: str, records_dir: str, vocabulary: str
            ) -> dict[str, tuple[Any, float]]:
  """The tasks of a task or mixture, with their mixing rates (a task: 1.0).

  The project's names (`tinythinker.<dataset>.<format>[.<stage>]`) are built
  for this run's records and vocabulary (`tasks.resolve`, passed as
  arguments); any other name is a seqio task or mixture registered elsewhere,
  whose rates are seqio's own (`Mixture.get_rate`: a number, or a rate
  function such as `seqio.mixing_rate_num_examples` evaluated now).
  """
  seqio, _ = tf_import.import_seqio()
  from tinythinker_jax import tasks  # pylint: disable=import-outside-toplevel
  ours = tasks.resolve(name, records_dir=records_dir, vocabulary=vocabulary)
  if ours is not None:
    return ours
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise errors.UserError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or "
                     f"mixture ({e})") from e
  if not isinstance(provider, seqio.Mixture):
    return {provider.name: (provider, 1.0)}
  return {t.name: (t, float(provider.get_rate(t))) for t in provider.tasks}


def prepare_data(mixture_or_task_name: str, feature_lengths: Mapping[str, int],
                 data_dir: paths.PathLike, splits: Sequence[str] = ("train", "validation"),
                 records_dir: str = "", vocabulary: str = "",
                 pack: bool = False) -> dict[str, Any]:
  """Materialises the tasks' splits once; returns the manifest (`tasks` counts
  rows per split; `sequences` the examples in them, which differ when packed)."""
  data_dir = paths.as_path(data_dir)
  manifest_path = data_dir / MANIFEST
  if manifest_path.exists():
    manifest = paths.read_json(manifest_path)
    if (manifest["name"] == mixture_or_task_name and
        manifest["feature_lengths"] == dict(feature_lengths) and
        bool(manifest.get("packed", False)) == bool(pack)):
      return manifest
  if jax.process_index() == 0:
    _materialize_all(mixture_or_task_name, feature_lengths, data_dir, splits, pack,
                     manifest_path, records_dir, vocabulary)
  shards.sync_processes("tinythinker_prepare_data")
  return paths.read_json(manifest_path)


def _materialize_all(mixture_or_task_name, feature_lengths, data_dir, splits, pack,
                     manifest_path, records_dir, vocabulary) -> None:
  """Materialises every task of the mixture, then writes the manifest."""
  expanded = _expand(mixture_or_task_name, records_dir, vocabulary)
  manifest = {"name": mixture_or_task_name, "feature_lengths": dict(feature_lengths),
              "packed": bool(pack), "tasks": {}, "sequences": {},
              "rates": {name: rate for name, (_, rate) in expanded.items()}}
  for name, (task, _) in expanded.items():
    vocab = task.output_features["targets"].vocabulary
    manifest["vocab_size"] = vocab.vocab_size
    manifest["tasks"][name] = {}
    for split in splits:
      try:
        meta = materialize(task, split, feature_lengths, data_dir / name / split,
                           pack=pack)
      except FileNotFoundError:
        continue  # That split has no records (e.g. no validation rationales).
      except EmptySplitError:
        if split == "train":
          raise
        print(f"warning: {name} {split}: no examples; training goes on without them",
              file=sys.stderr)
        continue
      manifest["tasks"][name][split] = meta["num_examples"]
      manifest["sequences"].setdefault(name, {})[split] = meta["num_sequences"]
      if meta["examples_at_length_limit"]:
        message = (f"{name} {split}: {meta['examples_at_length_limit']} of "
                   f"{meta['num_sequences']} examples reach TASK_FEATURE_LENGTHS="
                   f"{dict(feature_lengths)} and are truncated at the end (a "
                   "TinyThinker stage input loses its cue); raise TASK_FEATURE_LENGTHS")
        logging.warning(message)
        print(f"warning: {message}", file=sys.stderr)
        manifest.setdefault("truncated", {})[f"{name}/{split}"] = \
            meta["examples_at_length_limit"]
  data_dir.mkdir(parents=True, exist_ok=True)
  paths.write_json(manifest_path, manifest)


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
