"""One registry of the student formats: what each renders, trains on and is called.

Everything that was a string contract between files reads it here: which
teacher records a format renders (`method`), its stages and the interleaving
schedule of them (TinyThinker's recall, `num_options` analyze, summarize
batches), its seqio task and mixture names, the records file of a run's
split, and a task name's stage. The seqio tasks (`tinythinker_jax.tasks`),
materialisation, phase-1 training, the vocabulary and the pipeline use it.

| format | renders records of | stages |
|---|---|---|
| `vanilla` | `answers` (every question with its gold answer; no teacher) | one pass |
| `finetune_cot`, `finetune_cot_decoder` | `finetune_cot` | one pass |
| `step_by_step` | `step_by_step` (every chain, gold label) | predict and explain tasks in every batch; `predict:` alone at inference |
| `tinythinker` | `tinythinker` | recall, analyze (one per option), summarize |
| `summarize`, `recall_summarize`, `analyze_summarize` (ablations) | `tinythinker` | their stages |

Task names: `tinythinker.<dataset>.<format>` (a task, or for a staged format
the mixture of its stages) and `tinythinker.<dataset>.<format>.<stage>`, with
`/` in dataset names written `_`. Records: `<records_dir>/<dataset>/<method>/
<split>/records.jsonl` (the output folders of `tinythinker teach`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from tinythinker_jax import errors, paths, registries
from tinythinker_jax.reasoning.formats import STAGES_OF, TASKS_OF, Format, Stage

PREFIX = "tinythinker"
FINETUNE_COT = "finetune_cot"  # the teacher methods whose records formats render
TINYTHINKER = "tinythinker"
# Fine-tune-CoT's chains without its answer filter, labelled with the gold answer.
STEP_BY_STEP = "step_by_step"
ANSWERS = "answers"  # the dataset's questions and gold answers: no teacher


def dataset_key(dataset: str) -> str:
  """A dataset's name as task names and records folders write it."""
  return dataset.replace("/", "_")


def records_path(records_dir: paths.PathLike, dataset: str, method: str, split: str) -> str:
  """Where a teacher `method`'s records of a dataset split are under `records_dir`."""
  return str(paths.as_path(records_dir) / dataset_key(dataset) / method / split /
             "records.jsonl")


@dataclasses.dataclass(frozen=True)
class FormatSpec:
  """One student format; see the module docstring."""

  format: Format
  method: str  # ANSWERS, FINETUNE_COT, STEP_BY_STEP or TINYTHINKER: the records it renders
  stages: tuple[Stage, ...] = ()  # () for one-pass formats; a task each

  @property
  def name(self) -> str:
    return self.format.value

  @property
  def staged(self) -> bool:
    """Trained on several tasks (a stage or a multi-task format's task each)."""
    return bool(self.stages)

  @property
  def interleaved(self) -> bool:
    """A TinyThinker chain of stages: interleaved batches, staged inference."""
    return self.format in STAGES_OF

  @property
  def multitask(self) -> bool:
    """Every batch holds each of its tasks (Distilling Step-by-Step)."""
    return self.format in TASKS_OF

  def task_name(self, dataset: str, stage: Optional[Stage] = None) -> str:
    """The task (or, without a stage, a staged format's mixture) name."""
    base = f"{PREFIX}.{dataset_key(dataset)}.{self.name}"
    return base if stage is None else f"{base}.{stage.value}"

  def task_names(self, dataset: str) -> list[str]:
    """The tasks training reads: one, or one per stage."""
    if not self.staged:
      return [self.task_name(dataset)]
    return [self.task_name(dataset, s) for s in self.stages]

  def records_path(self, records_dir: paths.PathLike, dataset: str, split: str) -> str:
    return records_path(records_dir, dataset, self.method, split)

  def steps_per_cycle(self, interval: int, num_options: int) -> dict[str, int]:
    """TinyThinker's interleaving: `interval` batches of each stage, the analyze
    stage `interval * num_options` (one example per option)."""
    return {s.value: interval * (num_options if s is Stage.ANALYZE else 1)
            for s in self.stages}

  def mixture_rates(self, num_options: int) -> dict[Stage, float]:
    """The stage mixture's seqio rates, in the schedule's proportions."""
    return {s: float(num_options if s is Stage.ANALYZE else 1) for s in self.stages}


def _method(fmt: Format) -> str:
  if fmt in STAGES_OF:
    return TINYTHINKER
  if fmt is Format.VANILLA:
    return ANSWERS
  return STEP_BY_STEP if fmt is Format.STEP_BY_STEP else FINETUNE_COT


FORMATS: registries.Registry[FormatSpec] = registries.Registry("student format")
for _format in Format:
  FORMATS.register(_format.value, FormatSpec(
      _format, _method(_format), STAGES_OF.get(_format, TASKS_OF.get(_format, ()))))


def get(name: str, binding: str = "format") -> FormatSpec:
  """The spec of a format name (a `UserError` naming the setting otherwise)."""
  if isinstance(name, Format):
    name = name.value
  try:
    return FORMATS[name]
  except registries.UnknownName as e:
    raise errors.UserError(f"{binding}={name!r}: {e}") from None


def stage_of_task(task_name: str) -> Optional[Stage]:
  """The stage a task name ends in (None for a one-pass task)."""
  last = task_name.rsplit(".", 1)[-1]
  return next((s for s in Stage if s.value == last), None)


def stream_name(task_name: str) -> str:
  """The training stream a task feeds: its stage, or the task itself."""
  stage = stage_of_task(task_name)
  return stage.value if stage else task_name


@dataclasses.dataclass(frozen=True)
class ParsedTaskName:
  dataset_key: str
  spec: FormatSpec
  stage: Optional[Stage]


def parse_task_name(name: str) -> Optional[ParsedTaskName]:
  """`tinythinker.<dataset>.<format>[.<stage>]` split up, or None for a name of
  another form (a user's own seqio task)."""
  parts = name.split(".")
  if len(parts) < 3 or parts[0] != PREFIX:
    return None
  stage = stage_of_task(name)
  fmt = parts[-2] if stage is not None else parts[-1]
  dataset = ".".join(parts[1:-2] if stage is not None else parts[1:-1])
  if fmt not in FORMATS or not dataset:
    return None
  spec = FORMATS[fmt]
  if stage is not None and stage not in spec.stages:
    return None
  return ParsedTaskName(dataset, spec, stage)
