"""The TensorFlow-free training input path.

`write_features` stores tokenized, feature-converted, fixed-length examples as
one `.npy` file per feature (plus `meta.json`); `ArrayDataset` memory-maps them.
Packed arrays (several examples per row, `data.packing` or seqio's
`EncDecFeatureConverter(pack=True)`) are stored and read the same way, with
their segment ids and positions: a row is the unit of batching and of epochs.
Batches are a pure function of (seed, step): the order is a seeded permutation
per epoch, so a resumed run sees exactly the batches it would have seen, and
each process reads only its own slice of every global batch. On an object
store (`gs://`) the arrays are read into memory instead of memory-mapped.

`InterleavedSchedule` is TinyThinker's phase-1 schedule: `interval` recall
batches, then `interval * num_options` analyze batches, then `interval`
summarize batches, repeated. `MultiTaskSource` is Distilling Step-by-Step's:
every batch holds each task's rows of the same questions, weighted so that the
loss is `sum_t weight_t * (task t's mean token loss)`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from tinythinker_jax import errors, paths, seeds
from tinythinker_jax.paths import PathLike

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights")
# A teacher known by its stored top-k log-probs (`teacher.logprobs` writes them,
# `training.distillation` reads them): ids `[N, L, K]`, log-probs `[N, L, K]`
# (-inf: an empty slot) and which target positions have them `[N, L]`.
TEACHER_TOPK_FEATURES = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_topk_weights")
META = "meta.json"


def write_features(directory: PathLike, features: Mapping[str, np.ndarray],
                   meta: Optional[dict] = None) -> None:
  """Writes `{name: [N, length]}` arrays atomically (a complete folder or none).

  Locally a temporary folder is renamed into place. On an object store, where
  a folder cannot be renamed atomically, the arrays are written first and
  `meta.json` last: `ArrayDataset` refuses a folder without it.
  """
  sizes = {len(v) for v in features.values()}
  if len(sizes) != 1:
    raise errors.UserError(f"features have different example counts: {sizes}")
  directory = paths.as_path(directory)
  remote = paths.is_remote(directory)
  if remote:
    paths.remove(directory)
  target = directory if remote else directory.parent / (directory.name + ".tmp")
  target.mkdir(parents=True, exist_ok=True)
  for name, array in features.items():
    paths.save_npy(target / f"{name}.npy", np.ascontiguousarray(array))
  info = dict(meta or {}, num_examples=sizes.pop(),
              shapes={k: list(v.shape) for k, v in features.items()})
  paths.write_json(target / META, info)
  if not remote:
    paths.remove(directory)
    target.replace(directory)


class ArrayDataset:
  """Fixed-length features (memory-mapped locally) with deterministic (seed, step) batches.

  `features=None` reads every feature the folder holds (with packed arrays,
  their segment ids and positions too).
  """

  def __init__(self, directory: PathLike, features: Optional[Sequence[str]] = None):
    meta_path = paths.as_path(directory) / META
    if not meta_path.exists():
      raise errors.MissingFileError(f"{directory}: no {META}; materialise the task first "
                              "(`tinythinker materialize`)")
    self.meta = paths.read_json(meta_path)
    self.directory = str(directory)
    if features is None:
      features = tuple(self.meta.get("shapes") or FEATURES)
    missing = [n for n in features
               if not (paths.as_path(directory) / f"{n}.npy").exists()]
    if missing:
      raise errors.MissingFileError(f"{directory}: no {missing[0]}.npy; materialise the "
                                    "task again")
    self.arrays = {name: paths.load_npy(paths.as_path(directory) / f"{name}.npy")
                   for name in features}
    self.num_examples = int(self.meta["num_examples"])
    if self.num_examples == 0:
      raise errors.UserError(f"{directory}: no examples")

  @property
  def packed(self) -> bool:
    return bool(self.meta.get("packed"))

  def token_counts(self) -> np.ndarray:
    """Real (non-zero) tokens per row: encoder inputs and every `*target_tokens`
    feature (a preference pair's prompt counts once), as the train step counts."""
    names = [n for n in self.arrays
             if n == "encoder_input_tokens" or n.endswith("target_tokens")]
    return sum(np.count_nonzero(np.asarray(self.arrays[n]), axis=1) for n in names)

  def batch_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
    """The shapes of a global batch of this stream."""
    return {n: (batch_size,) + tuple(a.shape[1:]) for n, a in self.arrays.items()}

  def indices(self, seed: int, position: int, batch_size: int) -> np.ndarray:
    """Example indices of the `position`-th batch of this stream (epochs reshuffle)."""
    start = position * batch_size
    out = np.empty(batch_size, np.int64)
    filled = 0
    while filled < batch_size:
      epoch, offset = divmod(start + filled, self.num_examples)
      order = seeds.rng(seed, "epoch_order", epoch).permutation(self.num_examples)
      take = min(batch_size - filled, self.num_examples - offset)
      out[filled:filled + take] = order[offset:offset + take]
      filled += take
    return out

  def batch(self, seed: int, position: int, batch_size: int,
            local: slice = slice(None)) -> dict[str, np.ndarray]:
    """This process's slice of a global batch (sorted reads, original order kept)."""
    return self.take(self.indices(seed, position, batch_size)[local])

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature's `rows`, in their order (read sorted: memory-mapped files
    are read front to back)."""
    order = np.argsort(rows)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {name: np.asarray(array[rows[order]])[inverse]
            for name, array in self.arrays.items()}


@dataclasses.dataclass(frozen=True)
class InterleavedSchedule:
  """Which stream feeds global step `step`, and its position in that stream."""

  streams: tuple[str, ...]  # e.g. ("recall", "analyze", "summarize")
  steps_per_cycle: tuple[int, ...]  # e.g. (interval, interval * num_options, interval)

  @classmethod
  def tinythinker(cls, interval: int, num_options: int,
                  stages: Sequence[str] = ("recall", "analyze", "summarize")
                  ) -> "InterleavedSchedule":
    counts = {"recall": interval, "analyze": interval * num_options, "summarize": interval}
    return cls(tuple(stages), tuple(counts[s] for s in stages))

  def locate(self, step: int) -> tuple[str, int]:
    cycle, offset = divmod(step, sum(self.steps_per_cycle))
    for stream, count in zip(self.streams, self.steps_per_cycle):
      if offset < count:
        return stream, cycle * count + offset
      offset -= count
    raise AssertionError("unreachable")


class BatchSource:
  """Global step -> this process's batch, from one stream or an interleaved schedule."""

  def __init__(self, datasets: Mapping[str, ArrayDataset], batch_size: int, seed: int,
               schedule: Optional[InterleavedSchedule] = None,
               local: slice = slice(None)):
    if schedule is None and len(datasets) != 1:
      raise errors.UserError("several datasets need a schedule")
    if schedule is not None and set(schedule.streams) - set(datasets):
      raise errors.UserError(f"schedule streams {schedule.streams} lack datasets "
                       f"({sorted(datasets)})")
    self.datasets = dict(datasets)
    self.batch_size = batch_size
    self.seed = seed
    self.schedule = schedule
    self.local = local

  def stream_at(self, step: int) -> tuple[str, int]:
    if self.schedule is None:
      return next(iter(self.datasets)), step
    return self.schedule.locate(step)

  def _stream_seed(self, stream: str) -> int:
    return seeds.derive(self.seed, f"batches/{stream}")

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    stream, position = self.stream_at(step)
    return self.datasets[stream].batch(self._stream_seed(stream), position,
                                       self.batch_size, self.local)

  def global_indices(self, step: int) -> tuple[str, np.ndarray]:
    """The stream and the example indices of the whole global batch at `step`."""
    stream, position = self.stream_at(step)
    return stream, self.datasets[stream].indices(self._stream_seed(stream), position,
                                                 self.batch_size)

  def tokens_at(self, step: int, counts: Mapping[str, np.ndarray]) -> float:
    """Real tokens of the global batch at `step` (`counts`: each stream's per row)."""
    stream, rows = self.global_indices(step)
    return float(counts[stream][rows].sum())


class MultiTaskSource(BatchSource):
  """Every global batch holds `batch_size / len(tasks)` rows of each task, of the
  same examples: the tasks' arrays are rendered from the same records in the
  same order, and one seeded permutation per epoch picks the rows of all of
  them (Distilling Step-by-Step's predict and explain rows of one batch of
  questions).

  Each row's `decoder_loss_weights` are scaled by `weight_t * N / N_t` (N_t: the
  real target tokens of task t in the global batch, N: of all tasks), so that a
  token-sum loss normalised by its weight sum (t5x's NUM_REAL_TARGET_TOKENS) is
  `sum_t weight_t * mean token loss of task t`, the paper's
  `alpha * label loss + (1 - alpha) * rationale loss` for weights alpha, 1 - alpha
  summing to 1. Rows are stacked task by task in `task_weights`' order.
  """

  def __init__(self, datasets: Mapping[str, ArrayDataset], batch_size: int, seed: int,
               task_weights: Mapping[str, float], local: slice = slice(None)):
    tasks = tuple(task_weights)
    if set(tasks) != set(datasets):
      raise errors.UserError(f"task weights {dict(task_weights)} do not name the tasks "
                             f"{sorted(datasets)}")
    weights = np.array([float(task_weights[t]) for t in tasks])
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
      raise errors.UserError(f"task weights {dict(task_weights)}: non-negative, summing to 1")
    if batch_size % len(tasks):
      raise errors.UserError(f"batch_size={batch_size}: a multiple of the {len(tasks)} tasks "
                             "(every batch holds each task's rows of the same examples)")
    sizes = {t: datasets[t].num_examples for t in tasks}
    if len(set(sizes.values())) != 1:
      raise errors.UserError(f"multi-task rows {sizes}: every task needs one row per "
                             "example, in the same order (packed or filtered tasks cannot "
                             "be paired)")
    packed = [t for t in tasks if datasets[t].packed]
    if packed:
      raise errors.UserError(f"{packed[0]}: a multi-task format cannot be packed (PACK)")
    self.datasets = dict(datasets)
    self.batch_size = batch_size
    self.seed = seed
    self.schedule = None  # every step draws from every task
    self.local = local
    self.tasks = tasks
    self.task_weights = dict(zip(tasks, weights.tolist()))
    self.per_task = batch_size // len(tasks)

  def stream_at(self, step: int) -> tuple[str, int]:
    return self.tasks[0], step

  def _rows(self, step: int) -> np.ndarray:
    first = self.datasets[self.tasks[0]]
    return first.indices(seeds.derive(self.seed, "batches/multitask"), step, self.per_task)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    rows = self._rows(step)
    parts = [self.datasets[t].take(rows) for t in self.tasks]
    whole = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
    weights = whole["decoder_loss_weights"].astype(np.float32)
    counts = [weights[k * self.per_task:(k + 1) * self.per_task].sum()
              for k in range(len(self.tasks))]
    total = float(sum(counts))
    for k, task in enumerate(self.tasks):
      scale = self.task_weights[task] * total / counts[k] if counts[k] else 0.0
      weights[k * self.per_task:(k + 1) * self.per_task] *= scale
    whole["decoder_loss_weights"] = weights
    return {n: v[self.local] for n, v in whole.items()}

  def global_indices(self, step: int) -> tuple[str, np.ndarray]:
    return self.tasks[0], self._rows(step)

  def tokens_at(self, step: int, counts: Mapping[str, np.ndarray]) -> float:
    rows = self._rows(step)
    return float(sum(counts[t][rows].sum() for t in self.tasks))
