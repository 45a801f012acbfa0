"""A seqio task's splits as the arrays training reads (`tinythinker materialize`).

`prepare_data` is what `tinythinker train` calls first: it materialises each
task of `MIXTURE_OR_TASK_NAME` (split by split) into `<data_dir>/<task>/<split>`
(needs seqio/TensorFlow) and records the mixture's expansion (its tasks and
their mixing rates) in a manifest, so later runs, and hosts without TensorFlow,
read the arrays directly. With `pack=True` (gin: `PACK`) the arrays are seqio's
packed rows (`EncDecFeatureConverter(pack=True)`); the manifest records which,
and a change of `PACK` materialises again.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Sequence

import jax

from tinythinker_jax import errors, paths, shards, tf_import

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
  from tinythinker_jax import seqio_arrays  # pylint: disable=import-outside-toplevel
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
        meta = seqio_arrays.materialize(task, split, feature_lengths,
                                       data_dir / name / split, pack=pack)
      except FileNotFoundError:
        continue  # That split has no records (e.g. no validation rationales).
      except seqio_arrays.EmptySplitError:
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
