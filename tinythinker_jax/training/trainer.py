"""The training loop: partitioned steps, checkpoints, metrics, evaluation hooks.

`train` takes every collaborator as an argument (the model, through the
model interface, and its objective, the optimizer, the partitioner, a `batch_fn(step)` returning this process's slice
of the global batch at `step`), so it reads no files and knows nothing of gin.
It resumes from the latest checkpoint in `model_dir` automatically; because
batches are a function of the step, a resumed run takes exactly the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
import optax
import tqdm
from etils import epath

from tinythinker_jax import checkpoints, errors, paths, platforms, preemption
from tinythinker_jax import compute as compute_lib
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.partitioning import Partitioner
from tinythinker_jax.training import optimizers
from tinythinker_jax.training import step as step_lib
from tinythinker_jax.training.metric_writer import MetricWriter

log = logging.getLogger(__name__)

BatchFn = Callable[[int], Mapping[str, np.ndarray]]
EvalFn = Callable[[Any, int], Mapping[str, float]]  # (params, step) -> metrics


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  save_every: int = 1000
  keep: Optional[int] = 3
  asynchronous: bool = True


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Stop when `select_metric` has not improved by more than `min_delta` for
  `patience` evaluations in a row (0: never); the run is then converged."""

  patience: int = 0
  min_delta: float = 0.0


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  last_metrics: dict[str, float]
  resumed_from: Optional[int]
  compute: compute_lib.Compute = dataclasses.field(default_factory=compute_lib.Compute)
  stopped_early: Optional[int] = None  # the step an early stop ended training at


def evaluations_since_best(best: Optional[dict]) -> int:
  """Evaluations after the best one (`best.json`'s history)."""
  if not best:
    return 0
  return sum(1 for step, _ in best.get("history", []) if step > best["step"])


class Selection:
  """Model selection by an evaluation metric (higher is better), with early stopping.

  Every evaluation that beats the best so far (by more than `min_delta`) saves
  the parameters to `<model_dir>/best_checkpoint` and names its step in
  `<model_dir>/best.json` (with the history of evaluations), which the weight
  loader then prefers. With `patience`, the evaluation after which the metric
  has not improved for that many evaluations marks the run converged
  (`stopped_early` in best.json), and a resumed run stays stopped.
  """

  def __init__(self, model_dir: epath.Path, metric: str, early_stopping: EarlyStopping,
               fresh: bool):
    self.model_dir, self.metric, self.early_stopping = model_dir, metric, early_stopping
    best_dir = model_dir / checkpoints.BEST_CHECKPOINT
    self.best: Optional[dict] = None
    if fresh:  # A new run: a best left by an earlier run is stale.
      if jax.process_index() == 0:
        paths.remove(best_dir)
        paths.remove(model_dir / checkpoints.BEST_FILE)
    else:
      self.best = checkpoints.read_best(model_dir)
    self.checkpointer = checkpoints.Checkpointer(best_dir, save_every=1, keep=1,
                                                 asynchronous=False)

  @property
  def stopped_early(self) -> Optional[int]:
    return (self.best or {}).get("stopped_early")

  def update(self, done: int, value: float, params: Any, meta: dict,
             writer: MetricWriter) -> bool:
    """Records evaluation `value` at step `done`; True once the run has converged."""
    history = [h for h in (self.best or {}).get("history", []) if h[0] < done]
    history.append([done, value])
    if self.best is None or value > self.best["value"] + self.early_stopping.min_delta:
      if done not in self.checkpointer.all_steps():
        self.checkpointer.save(done, {"params": params}, dict(meta, step=done), force=True)
      self.best = {"step": done, "metric": self.metric, "value": value}
      log.info("step %d: %s=%.4f, the best so far", done, self.metric, value)
    self.best = dict(self.best, history=history)
    patience = self.early_stopping.patience
    converged = bool(patience) and evaluations_since_best(self.best) >= patience
    if converged:
      self.best["stopped_early"] = done
      log.info("step %d: %s has not improved for %d evaluations; stopping (best: step "
               "%d, %.4f)", done, self.metric, patience, self.best["step"],
               self.best["value"])
    writer.write(done, {f"best/{self.metric}": self.best["value"]})
    if jax.process_index() == 0:
      checkpoints.write_best(self.model_dir, self.best)
    return converged

  def close(self) -> None:
    self.checkpointer.close()


class ComputeCounter:
  """The run's compute: steps, real tokens, examples and model FLOPs of every step
  (device scalars, summed on the host only when read), and wall time; continued
  from a checkpoint's totals on resume."""

  def __init__(self, model: BaseModel, global_batch_size: int,
               start: Optional[compute_lib.Compute] = None):
    self.model, self.global_batch_size = model, global_batch_size
    self.totals = start or compute_lib.Compute()
    self._pending: list = []
    self._flops_by_shape: dict[tuple, Optional[int]] = {}
    self._started = time.time()

  def step(self, local_batch: Mapping[str, np.ndarray], metrics: Mapping[str, Any],
           extra_flops: Optional[Callable[[Mapping[str, tuple]], int]] = None) -> None:
    """Counts a step; `extra_flops(global shapes)` adds what it spent beyond the
    student's step (a teacher's forward pass, on-policy sampling)."""
    shapes = tuple(sorted((k, tuple(np.shape(v)[1:])) for k, v in local_batch.items()))
    if shapes not in self._flops_by_shape:
      self._flops_by_shape[shapes] = self.model.train_step_flops(self._global(shapes))
    flops = self._flops_by_shape[shapes]
    if extra_flops is not None and flops is not None:
      flops += extra_flops(self._global(shapes))
    self._pending.append((metrics["nonpadding_tokens"], metrics.get("examples"), flops))

  def _global(self, shapes: tuple) -> dict[str, tuple]:
    return {k: (self.global_batch_size,) + shape for k, shape in shapes}

  def _flush(self) -> None:
    for tokens, examples, flops in jax.device_get(self._pending):
      self.totals.train_steps += 1
      self.totals.train_tokens += float(tokens)
      self.totals.train_examples += float(self.global_batch_size if examples is None
                                          else examples)
      self.totals.train_flops += float(flops or 0)
    self._pending.clear()

  def now(self) -> compute_lib.Compute:
    self._flush()
    return dataclasses.replace(self.totals, wall_seconds=self.totals.wall_seconds +
                               time.time() - self._started)


def _restore_or_create(model: BaseModel, checkpointer: checkpoints.Checkpointer,
                       latest: Optional[int], create: Callable, abstract_state: Any,
                       state_shardings: Any, param_shardings: Any,
                       partitioner: Partitioner, rng: jax.Array,
                       initial_params: Optional[Callable[[Any], Any]]
                       ) -> tuple[step_lib.TrainState, dict]:
  """The train state: restored from the latest checkpoint from shapes alone
  (straight into the rules' layout: nothing is initialised first, so the state
  is never held twice), or created from initial parameters or an init."""
  if latest is None:
    if initial_params is not None:
      params = model.convert_params(initial_params(param_shardings))
      checkpoints.check_params_fit(params, nn.unbox(model.abstract_params()),
                                   "initial checkpoint")
      params = jax.device_put(params, param_shardings)  # a no-op when already placed
    else:
      params, _ = partitioner.init(model.init_params, rng)
    return create(params), {}
  saved_config = checkpointer.read_meta(latest).get("model_config", {})
  if bool(saved_config.get("scan_layers", False)) != model.scan_layers:
    binding = f"{type(model.config).__name__}.scan_layers"  # as gin names it
    raise errors.UserError(
        f"{checkpointer.directory}/{latest}: written with {binding}="
        f"{bool(saved_config.get('scan_layers', False))}, but this run has "
        f"{binding}={model.scan_layers}; resume with the same setting, or "
        "start a new model dir from it with INITIAL_CHECKPOINT_PATH (converted on load)")
  target = jax.tree.map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_state, state_shardings)
  try:
    return checkpointer.restore(latest, target)
  except ValueError as e:
    raise errors.UserError(f"{checkpointer.directory}/{latest}: the checkpoint does not fit "
                           f"the current model or optimizer configuration: {e}") from e


def _log_metrics(writer: MetricWriter, done: int, metrics: Mapping[str, Any],
                 counter: ComputeCounter, since: compute_lib.Compute, elapsed: float,
                 steps: int, learning_rate: Optional[float], peak: Optional[float]
                 ) -> dict[str, float]:
  """Writes `train/*`, `compute/*` and `memory/*` at step `done`; returns `train/*`."""
  last = {k: float(v) for k, v in jax.device_get(metrics).items()}
  del last["nonpadding_tokens"]
  now = counter.now()
  elapsed = max(elapsed, 1e-9)
  if learning_rate is not None:
    last["learning_rate"] = learning_rate
  # Real (non-padding) encoder and target tokens, and examples (packed rows hold
  # several; DPO: pairs), of the whole global batches.
  last.update(steps_per_s=steps / elapsed,
              tokens_per_s=(now.train_tokens - since.train_tokens) / elapsed,
              examples_per_s=(now.train_examples - since.train_examples) / elapsed)
  achieved = (now.train_flops - since.train_flops) / elapsed
  if achieved:
    last["model_tflops_per_s_per_device"] = achieved / jax.device_count() / 1e12
    if peak:
      last["mfu"] = achieved / peak
  writer.write(done, {f"train/{k}": v for k, v in last.items()})
  writer.write(done, {"compute/train_flops": now.train_flops,
                      "compute/train_tokens": now.train_tokens,
                      "compute/train_examples": now.train_examples,
                      "compute/wall_seconds": now.wall_seconds})
  memory = platforms.memory_metrics(jax.local_devices())  # the fullest device (TPU, GPU)
  if memory:
    writer.write(done, {f"memory/{k}": v for k, v in memory.items()})
  return last


def _evaluate(eval_fns: Mapping[str, EvalFn], params: Any, done: int,
              writer: MetricWriter, selection: Optional[Selection], meta: dict,
              last: dict[str, float]) -> bool:
  """Runs every hook at step `done` (their metrics logged and added to `last`)
  and selects by them; True when the run has converged."""
  current: dict[str, float] = {}
  for name, fn in dict(eval_fns).items():
    results = {f"{name}/{k}": v for k, v in dict(fn(params, done)).items()}
    writer.write(done, results)
    current.update(results)
  last.update(current)
  if selection is None or (selection.metric not in current and done == 0):
    return False  # (A hook may skip the initial parameters, e.g. a random init.)
  if selection.metric not in current:
    raise errors.UserError(f"select_metric={selection.metric!r} is not an evaluation "
                           f"metric (have {sorted(current)})")
  return selection.update(done, float(current[selection.metric]), params, meta, writer)


def train(*, model: BaseModel, objective, optimizer: optax.GradientTransformation,
          partitioner: Partitioner, batch_fn: BatchFn, global_batch_size: int,
          train_steps: int, model_dir: paths.PathLike, seed: int = 0,
          num_microbatches: int = 1,
          dropout: bool = False, checkpoint: CheckpointSettings = CheckpointSettings(),
          initial_params: Optional[Callable[[Any], Any]] = None, log_every: int = 10,
          eval_every: int = 0, eval_fns: Mapping[str, EvalFn] = (),
          meta: Optional[dict] = None, progress: bool = True,
          schedule: Optional[optax.Schedule] = None,
          select_metric: Optional[str] = None, eval_at_start: bool = True,
          early_stopping: EarlyStopping = EarlyStopping(),
          stop_after: Optional[int] = None,
          frozen: Optional[Mapping[str, tuple[Any, Any]]] = None) -> TrainResult:
  """Trains `model` with `objective`'s loss to `train_steps`; `stop_after` ends
  early (after saving) for tests.

  Compute (steps, real tokens, examples, model FLOPs, wall time) is counted
  from the first step across resumes (`ComputeCounter`), logged as
  `compute/*`, and written to `<model_dir>/compute.json` when training ends.
  With `select_metric` (an evaluation metric's full name, e.g.
  `validation/chain_accuracy`), the best evaluation is kept and
  `early_stopping` ends a converged run (`Selection`). The evaluation at step 0
  (the initial parameters; unless `eval_at_start=False`, or the hook gives
  nothing at step 0) is a candidate.

  `frozen` maps names to `(parameters, shardings)` placed on the mesh that
  every step reads but never updates (a distillation teacher's); they reach
  the objective in the step's `aux` with the host values of
  `objective.step_aux(step)`, and `objective.extra_step_flops` is counted.
  """
  if global_batch_size % num_microbatches:
    raise errors.UserError(f"batch size {global_batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}")
  if early_stopping.patience and not select_metric:
    raise errors.UserError("early stopping needs a selection metric: set "
                           "TrainSettings.eval_every and a validation (select_metric)")
  if select_metric and eval_every <= 0:
    raise errors.UserError(f"selecting by {select_metric} needs evaluations: set "
                           "TrainSettings.eval_every (or eval_every_epochs)")
  rng = jax.random.key(seed)
  boxed = model.abstract_params()
  param_shardings = partitioner.param_shardings(boxed)
  create_state = functools.partial(step_lib.TrainState.create, optimizer=optimizer)
  # Every leaf of the state (optimizer statistics included) is placed by the
  # logical-axis rules and held there by the jitted functions' shardings.
  abstract_state = jax.eval_shape(create_state, nn.unbox(boxed))
  state_shardings = partitioner.logical_shardings(
      optimizers.train_state_logical_axes(abstract_state, boxed))
  create = partitioner.partition(create_state, in_shardings=(param_shardings,),
                                 out_shardings=state_shardings, donate_argnums=(0,))
  model_dir = paths.as_path(model_dir)
  checkpointer = checkpoints.Checkpointer(model_dir / checkpoints.CHECKPOINTS,
                                          save_every=checkpoint.save_every,
                                          keep=checkpoint.keep,
                                          asynchronous=checkpoint.asynchronous)
  latest = checkpointer.latest_step()
  selection = (Selection(model_dir, select_metric, early_stopping, fresh=latest is None)
               if select_metric else None)
  state, saved_meta = _restore_or_create(model, checkpointer, latest, create,
                                         abstract_state, state_shardings, param_shardings,
                                         partitioner, rng, initial_params)
  if latest is not None:
    log.info("resumed from step %d in %s (saved meta: seed=%s)", latest, model_dir,
             saved_meta.get("seed"))
  counter = ComputeCounter(model, global_batch_size,
                           compute_lib.Compute.from_json(saved_meta.get("compute")))
  step_aux = getattr(objective, "step_aux", None)
  frozen = dict(frozen or {})
  uses_aux = bool(frozen) or step_aux is not None
  aux_shardings = None
  if uses_aux:
    aux_shardings = {name: sharding for name, (_, sharding) in frozen.items()}
    aux_shardings.update({name: partitioner.replicated
                          for name in (step_aux(0) if step_aux else {})})
  step_fn = partitioner.partition(
      step_lib.make_train_step(objective, optimizer, num_microbatches=num_microbatches,
                               dropout=dropout), donate_argnums=(0,),
      in_shardings=(state_shardings, partitioner.data_sharding(1), partitioner.replicated) +
      ((aux_shardings,) if uses_aux else ()),
      out_shardings=(state_shardings, partitioner.replicated))
  extra_flops = getattr(objective, "extra_step_flops", None)
  layout = partitioner.data_layout(global_batch_size)
  writer = MetricWriter(model_dir)
  activation_dtype = jax.numpy.dtype(model.config.compute_dtype).name
  base_meta = dict(meta or {}, seed=seed, global_batch_size=global_batch_size,
                   model=model.to_json(), model_config=dataclasses.asdict(model.config),
                   platform=dict(platforms.describe(), activation_dtype=activation_dtype))
  peak = platforms.peak_flops(jax.devices(), activation_dtype)
  start = int(jax.device_get(state.step))
  end = train_steps if stop_after is None else min(train_steps, stop_after)
  stopped_early = selection.stopped_early if selection else None
  if stopped_early is not None and start >= stopped_early:
    end = start  # Converged before this resume: nothing more to train.
  last: dict[str, float] = {}
  bar = tqdm.tqdm(total=train_steps, initial=start, desc="train", unit="step",
                  disable=not progress or jax.process_index() != 0)
  tick, tick_step, since = time.time(), start, counter.now()

  # SIGTERM (a preemption notice) stops the loop at the next step, saved; one
  # that comes during the last step stops the process once training is done.
  with preemption.guard("training"):
    preempted_at = None
    try:
      if eval_every and eval_at_start and start == 0:
        # The baseline that later evaluations are read against.
        _evaluate(eval_fns, state.params, 0, writer, selection, base_meta, last)
      for step in range(start, end):
        local = batch_fn(step)
        if len(next(iter(local.values()))) != layout.local_batch_size:
          raise errors.UserError(f"batch_fn({step}) gave {len(next(iter(local.values())))} "
                           f"examples; this process feeds {layout.local_batch_size}")
        host_aux = step_aux(step) if step_aux else {}
        aux = dict(host_aux, **{name: params for name, (params, _) in frozen.items()})
        state, metrics = step_fn(state, partitioner.shard_batch(dict(local)), rng,
                                 *((aux,) if uses_aux else ()))
        counter.step(local, metrics, extra_flops and (
            lambda shapes, host_aux=host_aux: extra_flops(shapes, host_aux)))
        done = step + 1
        bar.update(1)
        if done % log_every == 0 or done == end:
          last = _log_metrics(writer, done, metrics, counter, since, time.time() - tick,
                              done - tick_step,
                              float(schedule(step)) if schedule is not None else None, peak)
          tick, tick_step, since = time.time(), done, counter.now()
          bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}")
        converged = bool(eval_every) and (done % eval_every == 0 or done == train_steps) \
            and _evaluate(eval_fns, state.params, done, writer, selection, base_meta, last)
        stop = done < end and not converged and preemption.reached_sync_point(done)
        if done % checkpoint.save_every == 0 or done == end or stop or converged:
          checkpointer.save(done, state, dict(base_meta, step=done, data_position=done,
                                              compute=counter.now().to_json(),
                                              **({"converged": True} if converged else {})),
                            force=True)
        if converged:
          stopped_early = done
          break
        if stop:
          preempted_at = done
          break
    finally:
      bar.close()
      checkpointer.close()
      if selection is not None:
        selection.close()
      writer.close()
    if preempted_at is not None:
      raise preemption.Preempted(f"training saved at step {preempted_at} in {model_dir}")
  final = counter.now()
  if jax.process_index() == 0 and (int(jax.device_get(state.step)) >= train_steps or
                                   stopped_early is not None):
    compute_lib.write(model_dir, final, train_steps_planned=train_steps,
                      stopped_early=stopped_early)
  return TrainResult(state, last, latest, final, stopped_early)


def evaluate_loss(objective, partitioner: Partitioner,
                  batches: list[Mapping[str, np.ndarray]]
                  ) -> EvalFn:
  """An eval hook: teacher-forced loss and token accuracy over fixed batches."""
  fn = partitioner.partition(lambda p, b: objective.loss_sums(p, b)[1])

  def run(params, step: int = 0) -> dict[str, float]:
    del step
    totals: dict[str, float] = {}
    for batch in batches:
      sums = jax.device_get(fn(params, partitioner.shard_batch(dict(batch))))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    denom = float(objective.normalizer({k: np.float32(v) for k, v in totals.items()}))
    return {"loss": totals["loss"] / denom,
            "accuracy": totals["correct"] / max(totals["weight_sum"], 1.0)}
  return run
