"""The one student-training path: phase 1, phase 2 and the pipeline all call `fit`.

`TrainSettings` holds everything about *how* a student is trained that does
not depend on the phase: batch and length of training, optimizer, schedule,
gradient clipping, z-loss, microbatching, the mesh and its partitioning rules
(FSDP with `parameter_partitioning_dims=2`), checkpoints, logging and seed.
A phase supplies only *what* is trained: its model with its loss (token
cross-entropy, or a preference loss), its array datasets with their
interleaving, its initial parameters and its evaluation hooks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from tinythinker_jax import errors, partitioning
from tinythinker_jax.data import arrays
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.training import optimizers, trainer


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """How a student is trained, shared by both phases (gin: `recipe.TrainSettings`)."""

  batch_size: int = 64
  # Length: `train_steps`, `num_epochs` over the materialised arrays (all
  # streams together), or a budget: `train_flops` (model FLOPs, `models.flops`)
  # or `train_tokens` (real tokens); exactly one should be set.
  train_steps: Optional[int] = None
  num_epochs: Optional[float] = None
  train_flops: Optional[float] = None
  train_tokens: Optional[float] = None
  optimizer: str = "adafactor"
  schedule: str = "constant"
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  warmup_fraction: Optional[float] = None  # of the training steps; overrides warmup_steps
  weight_decay: float = 0.0
  max_grad_norm: Optional[float] = None  # global-norm clipping (HF Trainer: 1.0)
  z_loss: float = 1e-4
  num_microbatches: int = 1
  dropout_rate: Optional[float] = None  # None: the model config's
  # Mesh and t5x's logical-axis rules.
  data_parallelism: int = -1
  model_parallelism: int = 1
  parameter_partitioning_dims: int = 1
  activation_partitioning_dims: int = 1
  additional_rules: Optional[Sequence[tuple]] = None
  # Checkpoints, logging, evaluation.
  checkpoint_every: int = 1000
  keep_checkpoints: Optional[int] = 3
  async_checkpoints: bool = True
  log_every: int = 10
  eval_every: int = 0  # steps between evaluations (0: none)
  eval_every_epochs: Optional[float] = None  # or in epochs of the arrays
  evaluations: Optional[int] = None  # or this many, evenly spaced (budget-sized runs)
  # Model selection: keep the parameters of the best `select_metric` evaluation
  # (`validation/chain_accuracy` when the phase validates chains) as the model
  # dir's best checkpoint, which every later stage loads. '' turns it off.
  select_metric: str = "validation/chain_accuracy"
  # Convergence: stop once `select_metric` has not improved (by more than
  # `early_stop_min_delta`) for `early_stop_patience` evaluations (0: never).
  early_stop_patience: int = 0
  early_stop_min_delta: float = 0.0
  eval_batches: int = 8
  seed: int = 0

  LENGTHS = ("train_steps", "num_epochs", "train_flops", "train_tokens")

  def length_setting(self, binding: str = "TrainSettings") -> str:
    """The one length setting given (see `LENGTHS`)."""
    given = [name for name in self.LENGTHS if getattr(self, name)]
    if len(given) != 1:
      raise errors.UserError(
          f"{binding}: set exactly one of {', '.join(self.LENGTHS)} (got " +
          (", ".join(f"{n}={getattr(self, n)}" for n in given) or "none") + ")")
    return given[0]

  def steps_for(self, num_examples: int, binding: str = "TrainSettings",
                budget_steps: Optional[Callable[[str, float], int]] = None) -> int:
    """Training steps: `train_steps`, `num_epochs` over `num_examples`, or a
    budget turned into steps by `budget_steps(setting, value)`."""
    setting = self.length_setting(binding)
    if setting == "train_steps":
      return int(self.train_steps)
    if setting == "num_epochs":
      return max(1, math.ceil(self.num_epochs * num_examples / self.batch_size))
    if budget_steps is None:
      raise errors.UserError(f"{binding}: {setting} needs the training data to count "
                             "steps")
    return budget_steps(setting, float(getattr(self, setting)))

  def eval_interval(self, num_examples: int, steps: int) -> int:
    """Steps between evaluations: `eval_every`, `eval_every_epochs` in steps, or
    `steps / evaluations`."""
    given = [n for n in ("eval_every", "eval_every_epochs", "evaluations") if getattr(self, n)]
    if len(given) > 1:
      raise errors.UserError(f"TrainSettings: set one of {', '.join(given)}")
    if self.eval_every_epochs:
      return max(1, math.ceil(self.eval_every_epochs * num_examples / self.batch_size))
    if self.evaluations:
      return max(1, math.ceil(steps / self.evaluations))
    return int(self.eval_every)

  def partitioner(self) -> partitioning.Partitioner:
    mesh = partitioning.create_mesh(self.data_parallelism, self.model_parallelism)
    return partitioning.Partitioner(mesh, partitioning.standard_logical_axis_rules(
        self.activation_partitioning_dims, self.parameter_partitioning_dims,
        self.additional_rules))


def proportional_schedule(weights: Mapping[str, float], order: Sequence[str],
                          tolerance: float = 0.02, max_cycle: int = 64
                          ) -> Optional[arrays.InterleavedSchedule]:
  """Streams interleaved in proportion to `weights` (None for one stream).

  The weights are sizes (interleave by size) or a seqio Mixture's rates. The
  cycle is the shortest (up to `max_cycle` steps) whose integer step counts
  give every stream its share within `tolerance` (relative), so rates 0.7 and
  0.3 give a 10-step cycle of 7 and 3, not 2 and 1.
  """
  names = tuple(n for n in order if n in weights)
  if len(names) < 2:
    return None
  w = np.array([float(weights[n]) for n in names])
  if not np.all(np.isfinite(w)) or np.any(w <= 0):
    raise errors.UserError(f"stream weights {dict(zip(names, w.tolist()))}: every "
                           "mixture rate (or size) must be positive")
  share = w / w.sum()
  best = None
  for total in range(len(names), max_cycle + 1):
    counts = np.maximum(1, np.round(share * total)).astype(int)
    error = np.max(np.abs(counts / counts.sum() - share) / share)
    if best is None or error < best[0] - 1e-12:
      best = (error, counts)
    if error <= tolerance:
      break
  return arrays.InterleavedSchedule(names, tuple(int(c) for c in best[1]))


def steps_for_budget(source: arrays.BatchSource, step_flops: Callable[[Mapping[str, Any]],
                                                                    Optional[int]],
                     setting: str, budget: float, max_steps: int = 10_000_000,
                     extra_flops: Optional[Callable[[Mapping[str, Any], int], float]] = None
                     ) -> int:
  """The first step count whose batches spend `budget`: model FLOPs
  (`setting='train_flops'`, `step_flops(batch shapes)` per step, plus
  `extra_flops(batch shapes, step)` where an objective spends more, e.g. a
  teacher's forward pass) or real tokens (`'train_tokens'`). Batches are a
  function of the step, so this is exact and the same on every resume."""
  if budget <= 0:
    raise errors.UserError(f"{setting}={budget}: a budget must be positive")
  if setting == "train_flops":
    shapes = {name: dataset.batch_shapes(source.batch_size)
              for name, dataset in source.datasets.items()}
    per_stream = {}
    for name, batch_shapes in shapes.items():
      value = step_flops(batch_shapes)
      if not value:
        raise errors.UserError(f"train_flops: the model FLOPs of {name}'s batches are "
                               "unknown; give train_steps or train_tokens")
      per_stream[name] = float(value)
    if extra_flops is not None:  # Step by step: what a step adds may vary.
      spent, step = 0.0, 0
      while spent < budget:
        if step >= max_steps:
          raise errors.UserError(f"train_flops={budget:g}: more than {max_steps} steps")
        name = (source.stream_at(step)[0] if source.schedule is not None
                else next(iter(shapes)))
        spent += per_stream[name] + float(extra_flops(shapes[name], step))
        step += 1
      return step
    if source.schedule is None:
      return max(1, math.ceil(budget / next(iter(per_stream.values()))))
    cycle = source.schedule.steps_per_cycle
    cycle_flops = sum(c * per_stream[s] for s, c in zip(source.schedule.streams, cycle))
    full = int(budget // cycle_flops)
    spent, step = full * cycle_flops, full * sum(cycle)
    while spent < budget:
      spent += per_stream[source.stream_at(step)[0]]
      step += 1
    return max(1, step)
  if setting == "train_tokens":
    counts = {name: d.token_counts() for name, d in source.datasets.items()}
    spent, step = 0.0, 0
    while spent < budget:
      if step >= max_steps:
        raise errors.UserError(f"train_tokens={budget:g}: more than {max_steps} steps")
      spent += source.tokens_at(step, counts)
      step += 1
    return step
  raise errors.UserError(f"unknown budget setting {setting!r}")


@dataclasses.dataclass
class Fitted:
  result: trainer.TrainResult
  train_steps: int


def fit(*, model: BaseModel, objective_fn: Callable[[BaseModel], Any],
        datasets: Mapping[str, arrays.ArrayDataset],
        schedule: Optional[arrays.InterleavedSchedule], settings: TrainSettings,
        model_dir: str, initial_params: Optional[Callable[[Any], Any]] = None,
        eval_fns: Optional[Callable[[Any, partitioning.Partitioner, slice],
                                    Mapping[str, trainer.EvalFn]]] = None,
        meta: Optional[dict] = None, progress: bool = True, eval_at_start: bool = True,
        stop_after: Optional[int] = None, binding: str = "TrainSettings",
        task_weights: Optional[Mapping[str, float]] = None,
        frozen_fn: Optional[Callable[[partitioning.Partitioner],
                                     Mapping[str, tuple[Any, Any]]]] = None) -> Fitted:
  """Trains `model` (the model interface) on `datasets` as `settings` say, with
  the loss of `objective_fn(model)`; resumes in `model_dir`.

  `objective_fn` gets the model with `settings.dropout_rate` applied;
  `eval_fns(objective, partitioner, local_slice)` builds the evaluation hooks.
  `task_weights` (a multi-task format's, e.g. Distilling Step-by-Step's
  {'predict': alpha, 'explain': 1 - alpha}) puts every task's rows of the same
  examples in each batch, the loss their weighted per-task means
  (`arrays.MultiTaskSource`). `frozen_fn(partitioner)` places parameters every
  step reads but never trains (a distillation teacher's; `trainer.train`'s
  `frozen`), and the objective's `extra_step_flops` counts toward a FLOPs budget.
  """
  if task_weights and schedule is not None:
    raise errors.UserError("task_weights and an interleaving schedule exclude each other")

  def make_source(local=slice(None)):
    if task_weights:
      return arrays.MultiTaskSource(datasets, settings.batch_size, settings.seed,
                                    task_weights, local=local)
    return arrays.BatchSource(datasets, settings.batch_size, settings.seed, schedule,
                              local=local)
  if len(datasets) > 1 and schedule is None and not task_weights:
    raise errors.UserError(f"{sorted(datasets)}: several streams need a schedule")
  if settings.dropout_rate is not None:
    model = model.replace(dropout_rate=settings.dropout_rate)
  num_examples = sum(d.num_examples for d in datasets.values())
  budget_source = make_source()
  objective = objective_fn(model)
  extra = getattr(objective, "extra_step_flops", None)
  step_aux = getattr(objective, "step_aux", None)
  extra_flops = None if extra is None else (
      lambda shapes, step: extra(shapes, step_aux(step) if step_aux else {}))
  steps = settings.steps_for(
      num_examples, binding, lambda setting, value: steps_for_budget(
          budget_source, model.train_step_flops, setting, value, extra_flops=extra_flops))
  eval_every = settings.eval_interval(num_examples, steps)
  warmup = (int(settings.warmup_fraction * steps) if settings.warmup_fraction is not None
            else settings.warmup_steps)
  lr = optimizers.make_schedule(settings.schedule, learning_rate=settings.learning_rate,
                                warmup_steps=warmup,
                                total_steps=max(steps, warmup + 1))
  partitioner = settings.partitioner()
  layout = partitioner.data_layout(settings.batch_size)
  source = make_source(layout.local_slice)
  hooks = dict(eval_fns(objective, partitioner, layout.local_slice)) if eval_fns else {}
  # Selection applies when a hook gives the metric (e.g. chain validation is on).
  select = settings.select_metric if settings.select_metric and eval_every and any(
      settings.select_metric.startswith(f"{name}/") for name in hooks) else None
  if settings.early_stop_patience and not select:
    raise errors.UserError(
        f"{binding}.early_stop_patience={settings.early_stop_patience} needs evaluations "
        f"that give select_metric={settings.select_metric!r}: set eval_every (or "
        "eval_every_epochs) and a validation dataset")
  result = trainer.train(
      model=model, objective=objective,
      optimizer=optimizers.make_optimizer(
          settings.optimizer, lr,
          param_axes=optimizers.param_logical_axes(model.abstract_params()),
          weight_decay=settings.weight_decay, grad_clip_norm=settings.max_grad_norm),
      partitioner=partitioner, batch_fn=source, global_batch_size=settings.batch_size,
      train_steps=steps, model_dir=model_dir, seed=settings.seed,
      num_microbatches=settings.num_microbatches, dropout=model.dropout_rate > 0,
      checkpoint=trainer.CheckpointSettings(settings.checkpoint_every,
                                            settings.keep_checkpoints,
                                            settings.async_checkpoints),
      initial_params=initial_params, log_every=settings.log_every,
      eval_every=eval_every,
      eval_fns=hooks, schedule=lr, progress=progress, stop_after=stop_after,
      select_metric=select, eval_at_start=eval_at_start,
      early_stopping=trainer.EarlyStopping(settings.early_stop_patience,
                                           settings.early_stop_min_delta),
      meta=dict(meta or {}, train_settings=jsonable(settings)),
      frozen=frozen_fn(partitioner) if frozen_fn else None)
  return Fitted(result, steps)


def jsonable(settings: TrainSettings) -> dict[str, Any]:
  out = dataclasses.asdict(settings)
  if out["additional_rules"] is not None:
    out["additional_rules"] = [list(r) for r in out["additional_rules"]]
  return out
