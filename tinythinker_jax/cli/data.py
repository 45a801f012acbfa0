"""`tinythinker data` (or `python -m tinythinker_jax.cli.data`): inspect a dataset.

Lists the dataset names (`--list`), or loads one and prints its counts per
split, its answers and a rendered example in every student format.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from tinythinker_jax import gin_utils


def _add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dataset", help="a dataset name (see --list)")
  p.add_argument("--path", default="", help="the dataset's files (see --list)")
  p.add_argument("--seed", type=int, default=0, help="seed of the split recipe")
  p.add_argument("--list", action="store_true", help="list the dataset names")


def _data(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings, devices=False)
  from tinythinker_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.stages import teach  # pylint: disable=import-outside-toplevel
  if args.list or not args.dataset:
    for name, spec in sorted(datasets.DATASETS.items()):
      print(f"{name:<42} {spec.answer_type.value:<7} path: {spec.path_help}")
    return 0 if args.list else 2
  print(teach.describe_dataset(args.dataset, args.path, args.seed))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker data", _add_flags, _data, argv,
                       "inspect a dataset: counts per split, answers, a rendered example")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
