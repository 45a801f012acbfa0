"""Named datasets: which loader reads a path, and how it is split.

`load_dataset(name, path, seed)` returns `{'train', 'validation', 'test'}` lists
of Examples. The split recipes are the papers':

- Fine-tune-CoT tasks (`finetune_cot/<task>`, path = a folder holding the
  authors' `dataset/` and `split/` folders): their index files; the validation
  set is a seeded 10% of their train split (their notebook selected on test).
- CommonsenseQA: the official dev set is the test set, and 1221 training
  examples drawn with a fixed seed are the validation set (TinyThinker); the
  official files or Distilling Step-by-Step's `cqa/` folder (the same questions).
- StrategyQA: seeded 80/10/10 (TinyThinker). OpenBookQA: the official splits.
- GSM8K and AQuA: the official splits (validation carved from train when
  there is none). SVAMP and BIG-bench tasks: seeded 70/30 (Fine-tune-CoT's rule
  where a task has no official split), validation 10% of train; SVAMP from
  Distilling Step-by-Step's `svamp/` folder keeps that paper's 800/200 split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import numpy as np

from tinythinker_jax import errors, paths, registries
from tinythinker_jax.data import loaders, synthetic
from tinythinker_jax.data.schema import AnswerType, DataError, Example

Splits = dict[str, list[Example]]
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  answer_type: AnswerType
  load: Callable[[str, int], Splits]
  path_help: str
  num_options: Optional[int] = None


def _permutation(n: int, seed: int, salt: int) -> np.ndarray:
  return np.random.default_rng([seed, salt]).permutation(n)


def _split_fractions(examples: list[Example], fractions: tuple[float, ...], seed: int,
                     salt: int = 0) -> list[list[Example]]:
  order = _permutation(len(examples), seed, salt)
  bounds = np.cumsum([0] + [int(round(f * len(examples))) for f in fractions[:-1]])
  parts = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])] + [order[bounds[-1]:]]
  return [[examples[i] for i in sorted(p)] for p in parts]


def _carve_validation(train: list[Example], seed: int, size: int) -> tuple[list, list]:
  order = _permutation(len(train), seed, 1)
  held = set(order[:size].tolist())
  return ([e for i, e in enumerate(train) if i not in held],
          [e for i, e in enumerate(train) if i in held])


def _join(directory: str, *parts: str) -> str:
  """A dataset file under `directory` (a local folder or an object store)."""
  return str(paths.as_path(directory).joinpath(*parts))


def _require(path: str, kind: str) -> str:
  if not paths.as_path(path).exists():
    raise errors.MissingFileError(f"{path}: not found (expected {kind})")
  return path


def _csqa(path: str, seed: int) -> Splits:
  if paths.as_path(_join(path, "cqa_train.json")).exists():
    # Distilling Step-by-Step's release (its cqa/ folder, with the PaLM chains).
    train = loaders.load_dsbs_cqa_jsonl(_join(path, "cqa_train.json"), "csqa")
    test = loaders.load_dsbs_cqa_jsonl(
        _require(_join(path, "cqa_test.json"), "cqa_test.json (the official dev set)"), "csqa")
    train, validation = _carve_validation(train, seed, len(test))
    return {"train": train, "validation": validation, "test": test}
  train = loaders.load_arc_style_jsonl(
      _require(_join(path, "train_rand_split.jsonl"), "CommonsenseQA's official "
               "train_rand_split.jsonl"), "csqa")
  test = loaders.load_arc_style_jsonl(
      _require(_join(path, "dev_rand_split.jsonl"), "dev_rand_split.jsonl"), "csqa")
  train, validation = _carve_validation(train, seed, len(test))
  return {"train": train, "validation": validation, "test": test}


def _obqa(path: str, seed: int) -> Splits:
  del seed
  return {split: loaders.load_arc_style_jsonl(
      _require(_join(path, f"{name}.jsonl"), f"OpenBookQA's {name}.jsonl"), "obqa")
          for split, name in (("train", "train"), ("validation", "dev"), ("test", "test"))}


def _strategyqa(path: str, seed: int) -> Splits:
  if paths.as_path(path).is_dir():
    found = loaders.first_existing(path, ["task.json", "strategyqa_train.json"])
    if found is None:
      raise errors.MissingFileError(f"{path}: no task.json (BIG-bench) or strategyqa_train.json")
    path = found
  with paths.as_path(_require(path, "a StrategyQA json file")).open("r") as f:
    head = f.read(1).strip() or "["
  examples = (loaders.load_bigbench_task(path, "strategyqa") if head == "{" else
              loaders.load_strategyqa_json(path))
  train, validation, test = _split_fractions(examples, (0.8, 0.1, 0.1), seed)
  return {"train": train, "validation": validation, "test": test}


def _gsm8k(path: str, seed: int) -> Splits:
  train = loaders.load_gsm8k_jsonl(_require(_join(path, "train.jsonl"),
                                            "GSM8K's train.jsonl"))
  test = loaders.load_gsm8k_jsonl(_require(_join(path, "test.jsonl"),
                                           "GSM8K's test.jsonl"))
  train, validation = _carve_validation(train, seed, len(train) // 10)
  return {"train": train, "validation": validation, "test": test}


def _aqua(path: str, seed: int) -> Splits:
  del seed
  return {split: loaders.load_aqua_json_lines(
      _require(_join(path, f"{name}.json"), f"AQuA's {name}.json"))
          for split, name in (("train", "train"), ("validation", "dev"), ("test", "test"))}


def _seventy_thirty(examples: list[Example], seed: int) -> Splits:
  train, test = _split_fractions(examples, (0.7, 0.3), seed)
  train, validation = _carve_validation(train, seed, len(train) // 10)
  return {"train": train, "validation": validation, "test": test}


def _svamp(path: str, seed: int) -> Splits:
  if paths.as_path(_join(path, "svamp_train.json")).exists():
    # Distilling Step-by-Step's 800/200 split (its svamp/ folder, with the PaLM
    # chains); validation is a seeded 10% of its train part.
    train = loaders.load_dsbs_svamp_jsonl(_join(path, "svamp_train.json"))
    test = loaders.load_dsbs_svamp_jsonl(_require(_join(path, "svamp_test.json"),
                                                  "svamp_test.json"))
    train, validation = _carve_validation(train, seed, len(train) // 10)
    return {"train": train, "validation": validation, "test": test}
  if paths.as_path(path).is_dir():
    path = _join(path, "SVAMP.json")
  return _seventy_thirty(loaders.load_svamp_json(_require(path, "SVAMP.json")), seed)


def _bigbench(path: str, seed: int) -> Splits:
  if paths.as_path(path).is_dir():
    path = _join(path, "task.json")
  return _seventy_thirty(loaders.load_bigbench_task(_require(path, "a BIG-bench task.json")),
                         seed)


SHUFFLED_COUNTS = {3: "three", 5: "five", 7: "seven"}


def _shuffled_objects(count: int) -> Callable[[str, int], Splits]:
  """BIG-bench Tracking Shuffled Objects with `count` people (and swaps): `path`
  is BIG-bench's `tracking_shuffled_objects` folder, its `<count>_objects`
  folder or a task.json. Options keep the file's order (each person's
  starting item), without BIG-bench's trailing period. Split 70/30 as
  Fine-tune-CoT splits tasks without an official split."""
  def load(path: str, seed: int) -> Splits:
    if paths.as_path(path).is_dir():
      found = loaders.first_existing(path, [f"{SHUFFLED_COUNTS[count]}_objects/task.json",
                                            "task.json"])
      if found is None:
        raise errors.MissingFileError(
            f"{path}: no {SHUFFLED_COUNTS[count]}_objects/task.json (BIG-bench's "
            "tracking_shuffled_objects folder)")
      path = found
    examples = loaders.load_bigbench_task(_require(path, "a BIG-bench task.json"),
                                          f"shuffled_objects_{count}")
    examples = [dataclasses.replace(e, choices=tuple(
        dataclasses.replace(c, text=c.text.strip().rstrip(".").strip()) for c in e.choices))
                for e in examples]
    people = {len(e.choices) for e in examples}
    if people != {count}:
      raise DataError(f"{path}: questions with {sorted(people)} options; "
                      f"shuffled_objects_{count} expects {count}")
    return _seventy_thirty(examples, seed)
  return load


def _generic(path: str, seed: int) -> Splits:
  if paths.as_path(path).is_dir():
    splits = {}
    for split in SPLITS:
      file = _join(path, f"{split}.jsonl")
      splits[split] = loaders.load_generic_mc_jsonl(file) if paths.as_path(file).exists() else []
    if not splits["train"]:
      raise errors.MissingFileError(f"{path}: no train.jsonl")
    if not splits["validation"]:
      splits["train"], splits["validation"] = _carve_validation(
          splits["train"], seed, len(splits["train"]) // 10)
    return splits
  train, validation, test = _split_fractions(
      loaders.load_generic_mc_jsonl(_require(path, "a JSONL file")), (0.8, 0.1, 0.1), seed)
  return {"train": train, "validation": validation, "test": test}


def _finetune_cot(task: str) -> Callable[[str, int], Splits]:
  def load(path: str, seed: int) -> Splits:
    file = _join(path, "dataset", f"{loaders.FINETUNE_COT_TASKS[task]}.json")
    examples = loaders.load_finetune_cot_task(
        _require(file, f"Fine-tune-CoT's dataset/{loaders.FINETUNE_COT_TASKS[task]}.json"),
        task)
    split_file = _join(path, "split", f"{task}__default.json")
    if not paths.as_path(split_file).exists():
      return _seventy_thirty(examples, seed)
    indices = paths.read_json(split_file)
    if task == "gsm8k" and len(examples) == len(indices.get("test", ())):
      # The authors ship GSM8K's test part only (their split indexes train+test);
      # use the `gsm8k` dataset on the official files for a training split.
      return {"train": [], "validation": [], "test": examples}
    try:
      train = [examples[i] for i in indices["train"]]
      test = [examples[i] for i in indices["test"]]
    except (KeyError, IndexError) as e:
      raise DataError(f"{split_file}: bad split index file ({e!r})") from e
    train, validation = _carve_validation(train, seed, len(train) // 10)
    return {"train": train, "validation": validation, "test": test}
  return load


def _synthetic(generate: Callable[[np.random.Generator, int], Example],
               sizes=(2000, 300, 300)) -> Callable[[str, int], Splits]:
  def load(path: str, seed: int) -> Splits:
    del path
    return {split: [generate(np.random.default_rng([seed, 100 + s, i]), i)
                    for i in range(n)] for s, (split, n) in enumerate(zip(SPLITS, sizes))}
  return load


_FTC_TYPES = {
    "single_eq": AnswerType.NUMBER, "addsub": AnswerType.NUMBER,
    "multiarith": AnswerType.NUMBER, "gsm8k": AnswerType.NUMBER, "svamp": AnswerType.NUMBER,
    "aqua": AnswerType.LETTER, "date_understanding": AnswerType.LETTER,
    "tracking_shuffled_objects": AnswerType.LETTER, "commonsense_qa": AnswerType.LETTER,
    "last_letter_concatenation": AnswerType.TEXT, "coin_flip": AnswerType.YES_NO,
    "strategy_qa": AnswerType.YES_NO,
}

_BUILT_IN: dict[str, DatasetSpec] = {
    "csqa": DatasetSpec("csqa", AnswerType.LETTER, _csqa,
                        "folder with train_rand_split.jsonl and dev_rand_split.jsonl (or "
                        "Distilling Step-by-Step's cqa/ folder)", 5),
    "obqa": DatasetSpec("obqa", AnswerType.LETTER, _obqa,
                        "folder with train.jsonl, dev.jsonl, test.jsonl", 4),
    "strategyqa": DatasetSpec("strategyqa", AnswerType.YES_NO, _strategyqa,
                              "BIG-bench task.json or strategyqa_train.json", 2),
    "gsm8k": DatasetSpec("gsm8k", AnswerType.NUMBER, _gsm8k,
                         "folder with the official train.jsonl and test.jsonl"),
    "aqua": DatasetSpec("aqua", AnswerType.LETTER, _aqua,
                        "folder with the official train.json, dev.json, test.json", 5),
    "svamp": DatasetSpec("svamp", AnswerType.NUMBER, _svamp,
                         "SVAMP.json (or Distilling Step-by-Step's svamp/ folder)"),
    "bigbench": DatasetSpec("bigbench", AnswerType.LETTER, _bigbench,
                            "a BIG-bench multiple-choice task.json"),
    "mc_jsonl": DatasetSpec("mc_jsonl", AnswerType.LETTER, _generic,
                            "a generic multiple-choice .jsonl, or a folder of "
                            "train/validation/test.jsonl"),
    "coin_flip": DatasetSpec("coin_flip", AnswerType.YES_NO,
                             _synthetic(synthetic.coin_flip_example), "(generated)", 2),
    "coin_flip_long": DatasetSpec(
        "coin_flip_long", AnswerType.YES_NO,
        _synthetic(functools.partial(synthetic.coin_flip_example, min_people=4,
                                     max_people=6)), "(generated, 4-6 people)", 2),
    "coin_flip_longer": DatasetSpec(
        "coin_flip_longer", AnswerType.YES_NO,
        _synthetic(functools.partial(synthetic.coin_flip_example, min_people=6,
                                     max_people=8)), "(generated, 6-8 people)", 2),
    "last_letter": DatasetSpec("last_letter", AnswerType.TEXT,
                               _synthetic(synthetic.last_letter_example), "(generated)"),
}
# Named datasets (`register` adds one: a name, its answer type and its loader).
DATASETS: registries.Registry[DatasetSpec] = registries.Registry("dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
  return DATASETS.register(spec.name, spec)


for _spec in _BUILT_IN.values():
  register(_spec)
for _count, _word in SHUFFLED_COUNTS.items():
  register(DatasetSpec(
      f"shuffled_objects_{_count}", AnswerType.LETTER, _shuffled_objects(_count),
      f"BIG-bench's tracking_shuffled_objects folder (or its {_word}_objects/task.json)",
      _count))
for _task, _type in _FTC_TYPES.items():
  register(DatasetSpec(f"finetune_cot/{_task}", _type, _finetune_cot(_task),
                       "folder with Fine-tune-CoT's dataset/ and split/ folders"))


def get_spec(name: str) -> DatasetSpec:
  return DATASETS[name]  # An unknown name lists the known ones.


def load_dataset(name: str, path: str = "", seed: int = 0) -> Splits:
  """Loads and splits a named dataset; see the module docstring for the recipes."""
  return get_spec(name).load(path, seed)


def load_split(name: str, path: str = "", split: str = "test", seed: int = 0,
               max_examples: Optional[int] = None) -> tuple[list[Example], AnswerType]:
  """One split's examples (the first `max_examples`) and the dataset's answer type."""
  spec = get_spec(name)
  splits = load_dataset(name, path, seed)
  if split not in splits:
    raise errors.UserError(f"split={split!r}; {name} has {list(splits)}")
  examples = splits[split][:max_examples] if max_examples else splits[split]
  if not examples:
    raise errors.UserError(f"{name} {split}: no examples")
  require_answers(examples, name, split)
  return list(examples), spec.answer_type


def require_answers(examples: list[Example], name: str, split: str) -> None:
  """Raises naming the first example without a gold answer (its file and line):
  teaching, validating and evaluating need one. (`tinythinker data` counts them.)"""
  unlabelled = [e for e in examples if e.answer is None]
  if unlabelled:
    raise DataError(f"{unlabelled[0].source or unlabelled[0].id}: no answer ({name} "
                    f"{split}: {len(unlabelled)} of {len(examples)} examples have none); "
                    "teaching, training and evaluating need the gold answer")
