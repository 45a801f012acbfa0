"""`tinythinker materialize`: a seqio task's splits as the arrays training reads.

`prepare_data` is what `tinythinker train` calls first: it materialises each
task of `MIXTURE_OR_TASK_NAME` (split by split) into `<data_dir>/<task>/<split>`
(needs seqio/TensorFlow) and records the mixture's expansion (its tasks and
their mixing rates) in a manifest, so later runs, and hosts without TensorFlow,
read the arrays directly. With `pack=True` (gin: `PACK`) the arrays are seqio's
packed rows (`EncDecFeatureConverter(pack=True)`); the manifest records which,
and a change of `PACK` materialises again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import jax

from tinythinker_jax import errors, gin_utils, paths, shards, tf_import

MANIFEST = "manifest.json"


def _expand(name: str) -> dict[str, float]:
  """The tasks of a task or mixture, with their mixing rates (a task: 1.0).

  A mixture's rates are seqio's own (`Mixture.get_rate`: a number, or a rate
  function such as `seqio.mixing_rate_num_examples` evaluated now).
  """
  seqio, _ = tf_import.import_seqio()
  from tinythinker_jax import tasks  # pylint: disable=import-outside-toplevel
  tasks.register_all()
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise errors.UserError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or "
                     f"mixture ({e})") from e
  if not isinstance(provider, seqio.Mixture):
    return {provider.name: 1.0}
  return {t.name: float(provider.get_rate(t)) for t in provider.tasks}


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
    # The registered tasks find their files and vocabulary through these, set
    # for the materialisation only (a later run in this process keeps its own).
    with _environment(TINYTHINKER_RECORDS_DIR=records_dir, TINYTHINKER_VOCAB=vocabulary):
      _materialize_all(mixture_or_task_name, feature_lengths, data_dir, splits, pack,
                       manifest_path)
  shards.sync_processes("tinythinker_prepare_data")
  return paths.read_json(manifest_path)


@contextlib.contextmanager
def _environment(**values: str):
  """Sets the non-empty `values` as environment variables, restoring them after."""
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update({k: v for k, v in values.items() if v})
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _materialize_all(mixture_or_task_name, feature_lengths, data_dir, splits, pack,
                     manifest_path) -> None:
  """Materialises every task of the mixture, then writes the manifest."""
  from tinythinker_jax import seqio_arrays  # pylint: disable=import-outside-toplevel
  seqio, _ = tf_import.import_seqio()
  rates = _expand(mixture_or_task_name)
  names = list(rates)
  manifest = {"name": mixture_or_task_name, "feature_lengths": dict(feature_lengths),
              "packed": bool(pack), "tasks": {}, "sequences": {}, "rates": rates}
  for name in names:
    vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    manifest["vocab_size"] = vocab.vocab_size
    manifest["tasks"][name] = {}
    for split in splits:
      try:
        meta = seqio_arrays.materialize(name, split, feature_lengths,
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
  shards.write_json_atomically(manifest_path, manifest)


def _add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--task", required=True, help="a seqio task or mixture name")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--inputs_length", type=int, required=True)
  parser.add_argument("--targets_length", type=int, required=True)
  parser.add_argument("--records_dir", default="", help="$TINYTHINKER_RECORDS_DIR")
  parser.add_argument("--vocabulary", default="", help="$TINYTHINKER_VOCAB")
  parser.add_argument("--pack", action="store_true",
                      help="pack several examples per row, as seqio's "
                      "EncDecFeatureConverter(pack=True)")


def _materialize(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings)
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  manifest = prepare_data(args.task, lengths, args.output_dir,
                          records_dir=args.records_dir, vocabulary=args.vocabulary,
                          pack=args.pack)
  print(json.dumps(manifest, indent=2))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker materialize", _add_flags, _materialize, argv,
                       "write a seqio task's splits as the arrays training reads")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
