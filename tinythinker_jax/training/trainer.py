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
import logging
import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
import optax
import tqdm

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


def _param_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


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
          stop_after: Optional[int] = None) -> TrainResult:
  """Trains to `train_steps`; `stop_after` ends early (after saving) for tests.

  Compute (steps, real tokens, examples, model FLOPs, wall time) is counted
  from the first step across resumes (`compute`), logged as `compute/*`, and
  written to `<model_dir>/compute.json` when training ends. With
  `early_stopping.patience`, training stops (saved, marked in `best.json` and
  `compute.json`) once `select_metric` has not improved for that many
  evaluations; a resumed run that had stopped stays stopped.

  With `select_metric` (an evaluation metric's full name, e.g.
  `validation/chain_accuracy`; higher is better), every evaluation that beats
  the best so far saves the parameters to `<model_dir>/best_checkpoint` and
  names its step in `<model_dir>/best.json`, which the weight loader then
  prefers. The evaluation at step 0 (the initial parameters; unless
  `eval_at_start=False`, or the hook gives nothing at step 0) is a candidate.
  """
  if global_batch_size % num_microbatches:
    raise errors.UserError(f"batch size {global_batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}")
  rng = jax.random.key(seed)
  init_fn = model.init_params
  boxed = jax.eval_shape(init_fn, rng)
  abstract_params = nn.unbox(boxed)
  param_shardings = partitioner.param_shardings(boxed)
  create_state = lambda p: step_lib.TrainState.create(p, optimizer)  # noqa: E731
  # Every leaf of the state (optimizer statistics included) is placed by the
  # logical-axis rules and held there by the jitted functions' shardings.
  abstract_state = jax.eval_shape(create_state, abstract_params)
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
  resumed_from = None
  totals = compute_lib.Compute()  # what the run has spent, across resumes
  best: Optional[dict] = None
  best_checkpointer = None
  if early_stopping.patience and not select_metric:
    raise errors.UserError("early stopping needs a selection metric: set "
                           "TrainSettings.eval_every and a validation (select_metric)")
  if select_metric:
    if eval_every <= 0:
      raise errors.UserError(f"selecting by {select_metric} needs evaluations: set "
                             "TrainSettings.eval_every (or eval_every_epochs)")
    best_dir = model_dir / checkpoints.BEST_CHECKPOINT
    if latest is None:  # A fresh run: a best left by an earlier run is stale.
      if jax.process_index() == 0:
        paths.remove(best_dir)
        paths.remove(model_dir / checkpoints.BEST_FILE)
    else:
      best = checkpoints.read_best(model_dir)
    best_checkpointer = checkpoints.Checkpointer(best_dir, save_every=1, keep=1,
                                                 asynchronous=False)
  if latest is None:
    if initial_params is not None:
      params = model.convert_params(initial_params(param_shardings))
      checkpoints.check_params_fit(params, abstract_params, "initial checkpoint")
      params = jax.device_put(params, param_shardings)  # a no-op when already placed
    else:
      params, _ = partitioner.init(init_fn, rng)
    state = create(params)
    del params  # donated to the state
  else:
    # Restored from shapes alone, straight into the rules' layout: nothing is
    # initialised first, so the state is never held twice.
    saved_config = checkpointer.read_meta(latest).get("model_config", {})
    if bool(saved_config.get("scan_layers", False)) != model.scan_layers:
      raise errors.UserError(
          f"{checkpointer.directory}/{latest}: written with T5Config.scan_layers="
          f"{bool(saved_config.get('scan_layers', False))}, but this run has "
          f"scan_layers={model.scan_layers}; resume with the same setting, or "
          "start a new model dir from it with INITIAL_CHECKPOINT_PATH (converted on load)")
    target = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_state, state_shardings)
    try:
      state, saved_meta = checkpointer.restore(latest, target)
    except ValueError as e:
      raise errors.UserError(f"{checkpointer.directory}/{latest}: the checkpoint does not fit "
                       f"the current model or optimizer configuration: {e}") from e
    resumed_from = latest
    totals = compute_lib.Compute.from_json(saved_meta.get("compute"))
    log.info("resumed from step %d in %s (saved meta: seed=%s)", latest, model_dir,
             saved_meta.get("seed"))
  step_fn = partitioner.partition(
      step_lib.make_train_step(objective, optimizer, num_microbatches=num_microbatches,
                               dropout=dropout), donate_argnums=(0,),
      in_shardings=(state_shardings, partitioner.data_sharding(1), partitioner.replicated),
      out_shardings=(state_shardings, partitioner.replicated))
  layout = partitioner.data_layout(global_batch_size)
  writer = MetricWriter(model_dir)
  activation_dtype = jax.numpy.dtype(model.config.compute_dtype).name
  base_meta = dict(meta or {}, seed=seed, global_batch_size=global_batch_size,
                   model=model.to_json(),
                   model_config=dataclasses.asdict(model.config),
                   platform=dict(platforms.describe(), activation_dtype=activation_dtype))
  start = int(jax.device_get(state.step))
  end = train_steps if stop_after is None else min(train_steps, stop_after)
  stopped_early = (best or {}).get("stopped_early")
  if stopped_early is not None and start >= stopped_early:
    end = start  # Converged before this resume: nothing more to train.
  last: dict[str, float] = {}
  bar = tqdm.tqdm(total=train_steps, initial=start, desc="train", unit="step",
                  disable=not progress or jax.process_index() != 0)
  tick, tick_step = time.time(), start
  # (non-padding tokens, examples, model FLOPs) of the steps not yet added to
  # `totals` (device scalars: no host sync per step).
  counted: list = []
  # Model FLOPs of a step by its batch shapes (`models.flops`), and the devices'
  # peak, for the compute totals, TFLOP/s per device and MFU.
  flops_by_shape: dict[tuple, Optional[int]] = {}
  peak = platforms.peak_flops(jax.devices(), activation_dtype)
  wall_start = time.time()

  def add_counted() -> None:
    """Adds the steps counted since the last call to `totals`."""
    if not counted:
      return
    for tokens, examples, step_flops in jax.device_get(counted):
      totals.train_steps += 1
      totals.train_tokens += float(tokens)
      totals.train_examples += float(global_batch_size if examples is None else examples)
      totals.train_flops += float(step_flops or 0)
    counted.clear()

  def compute_now() -> compute_lib.Compute:
    add_counted()
    return dataclasses.replace(totals, wall_seconds=totals.wall_seconds +
                               time.time() - wall_start)

  def run_evals(done: int) -> bool:
    """Runs the hooks; True when early stopping says the run has converged."""
    nonlocal best
    current: dict[str, float] = {}
    for name, fn in dict(eval_fns).items():
      results = dict(fn(state.params, done))
      writer.write(done, {f"{name}/{k}": v for k, v in results.items()})
      current.update({f"{name}/{k}": v for k, v in results.items()})
    last.update(current)
    if not select_metric:
      return False
    if select_metric not in current:
      if done == 0:
        return False  # The hook skips the initial parameters (e.g. a random init).
      raise errors.UserError(f"select_metric={select_metric!r} is not an evaluation metric "
                             f"(have {sorted(current)})")
    value = float(current[select_metric])
    history = (best or {}).get("history", [])
    history = [h for h in history if h[0] < done] + [[done, value]]
    if best is None or value > best["value"] + early_stopping.min_delta:
      if done not in best_checkpointer.all_steps():
        best_checkpointer.save(done, {"params": state.params},
                               dict(base_meta, step=done), force=True)
      best = {"step": done, "metric": select_metric, "value": value}
      log.info("step %d: %s=%.4f, the best so far", done, select_metric, value)
    best = dict(best, history=history)
    converged = bool(early_stopping.patience) and (
        evaluations_since_best(best) >= early_stopping.patience)
    if converged:
      best["stopped_early"] = done
      log.info("step %d: %s has not improved for %d evaluations; stopping (best: step "
               "%d, %.4f)", done, select_metric, early_stopping.patience, best["step"],
               best["value"])
    writer.write(done, {f"best/{select_metric}": best["value"]})
    if jax.process_index() == 0:
      checkpoints.write_best(model_dir, best)
    return converged

  # SIGTERM (a preemption notice) stops the loop at the next step, saved; one
  # that comes during the last step stops the process once training is done.
  with preemption.guard("training"):
    preempted_at = None
    try:
      if eval_every and eval_at_start and start == 0:
        run_evals(0)  # The baseline that later evaluations are read against.
      for step in range(start, end):
        local = batch_fn(step)
        if len(next(iter(local.values()))) != layout.local_batch_size:
          raise errors.UserError(f"batch_fn({step}) gave {len(next(iter(local.values())))} "
                           f"examples; this process feeds {layout.local_batch_size}")
        shape_key = tuple(sorted((k, tuple(np.shape(v)[1:])) for k, v in local.items()))
        if shape_key not in flops_by_shape:
          flops_by_shape[shape_key] = model.train_step_flops({
              k: (global_batch_size,) + tuple(np.shape(v)[1:]) for k, v in local.items()})
        step_flops = flops_by_shape[shape_key]
        state, metrics = step_fn(state, partitioner.shard_batch(dict(local)), rng)
        # Device scalars, summed at the next log (no host sync per step).
        counted.append((metrics["nonpadding_tokens"], metrics.get("examples"), step_flops))
        done = step + 1
        bar.update(1)
        if done % log_every == 0 or done == end:
          last = {k: float(v) for k, v in jax.device_get(metrics).items()}
          elapsed = max(time.time() - tick, 1e-9)
          steps = done - tick_step
          before = dataclasses.replace(totals)
          add_counted()
          tokens = totals.train_tokens - before.train_tokens
          examples = totals.train_examples - before.train_examples
          achieved = (totals.train_flops - before.train_flops) / elapsed
          del last["nonpadding_tokens"]
          if schedule is not None:
            last["learning_rate"] = float(schedule(step))
          # Real (non-padding) encoder and target tokens, and examples (packed
          # rows hold several; DPO: pairs), of the whole global batches.
          last.update(steps_per_s=steps / elapsed, tokens_per_s=tokens / elapsed,
                      examples_per_s=examples / elapsed)
          if achieved:
            last["model_tflops_per_s_per_device"] = achieved / jax.device_count() / 1e12
            if peak:
              last["mfu"] = achieved / peak
          tick, tick_step = time.time(), done
          writer.write(done, {f"train/{k}": v for k, v in last.items()})
          now = compute_now()
          writer.write(done, {"compute/train_flops": now.train_flops,
                              "compute/train_tokens": now.train_tokens,
                              "compute/train_examples": now.train_examples,
                              "compute/wall_seconds": now.wall_seconds})
          # Peak bytes in use on this process's fullest device (TPU, GPU).
          memory = platforms.memory_metrics(jax.local_devices())
          if memory:
            writer.write(done, {f"memory/{k}": v for k, v in memory.items()})
          bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}")
        converged = False
        if eval_every and (done % eval_every == 0 or done == train_steps):
          converged = run_evals(done)
        stop = done < end and not converged and preemption.reached_sync_point(done)
        if done % checkpoint.save_every == 0 or done == end or stop or converged:
          checkpointer.save(done, state, dict(base_meta, step=done, data_position=done,
                                              compute=compute_now().to_json(),
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
      if best_checkpointer is not None:
        best_checkpointer.close()
      writer.close()
    if preempted_at is not None:
      raise preemption.Preempted(f"training saved at step {preempted_at} in {model_dir}")
  final = compute_now()
  if jax.process_index() == 0 and (int(jax.device_get(state.step)) >= train_steps or
                                   stopped_early is not None):
    compute_lib.write(model_dir, final, train_steps_planned=train_steps,
                      stopped_early=stopped_early)
  return TrainResult(state, last, resumed_from, final, stopped_early)


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
