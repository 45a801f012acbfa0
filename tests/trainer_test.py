"""The phase-1 trainer in-process: meshes, accumulation, resharded restore, schedules."""

import gc
import json
import os
import signal
import types

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader

from tests.conftest import init_params
from tinythinker_jax import checkpoints, partitioning, platforms, preemption, weights
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.convert import save_hf_t5
from tinythinker_jax.models import flops
from tinythinker_jax.training import objectives, optimizers, trainer
from tinythinker_jax.training import step as step_lib


def copy_task(vocab: int, batch: int):
  """step -> a batch of 'copy the input' examples, a pure function of the step."""
  def batch_fn(step):
    x = np.random.default_rng([7, step]).integers(2, vocab, (batch, 8)).astype(np.int32)
    targets = np.concatenate([x, np.ones((batch, 1), np.int32)], axis=1)
    return {"encoder_input_tokens": x, "decoder_target_tokens": targets,
            "decoder_input_tokens": np.asarray(step_lib.shift_right(targets)),
            "decoder_loss_weights": np.ones_like(targets)}
  return batch_fn


def run(config, model_dir, *, data=1, model=1, param_dims=1, steps=6, microbatches=1,
        optimizer="adamw", batch=8, stop_after=None, save_every=3, batch_fn=None,
        **extra):
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(data, model),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=param_dims))
  schedule = optimizers.make_schedule("constant", learning_rate=3e-3, warmup_steps=2)
  return trainer.train(
      model=EncoderDecoderModel(config),
      objective=objectives.TokenCrossEntropy(EncoderDecoderModel(config)),
      optimizer=optimizers.make_optimizer(optimizer, schedule, param_axes=(
          optimizers.param_logical_axes(EncoderDecoderModel(config).abstract_params()))),
      partitioner=partitioner,
      batch_fn=batch_fn or copy_task(config.vocab_size, batch), global_batch_size=batch,
      train_steps=steps, model_dir=str(model_dir), num_microbatches=microbatches,
      checkpoint=trainer.CheckpointSettings(save_every=save_every, keep=2), log_every=1,
      schedule=schedule, progress=False, stop_after=stop_after, **extra)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-4, outliers=1e-3, outlier_atol=1e-3):
  """Leaf by leaf, within `atol` + `rtol`, except at most a fraction `outliers` of
  entries that may reach `outlier_atol`. Different meshes sum in different
  orders, and Adam's m/sqrt(v) turns that into a visible step where a gradient
  entry is near zero (a dead GELU unit: up to ~10% of lr 3e-3 after a few
  steps); 1e-4 is ~3% of one step's update. A layout bug moves whole rows or
  blocks, not one entry in a thousand."""
  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    far = np.abs(x - y) > atol + rtol * np.abs(y)
    assert far.mean() <= outliers, (far.sum(), far.size)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=max(atol, outlier_atol))
  jax.tree.map(check, a, b)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  """`run` on one device, computed once per (optimizer, steps) for the module."""
  cache = {}

  def get(config, optimizer="adamw", steps=6):
    if (optimizer, steps) not in cache:
      cache[optimizer, steps] = run(config, tmp_path_factory.mktemp("one"),
                                    optimizer=optimizer, steps=steps, save_every=100)
    return cache[optimizer, steps]
  return get


# The step's numbers on 2x4 without FSDP are partitioning_test's; here the loop
# with its optimizer state, on FSDP meshes.
@pytest.mark.parametrize("data,model,param_dims,optimizer", [
    (2, 4, 2, "adafactor"), (8, 1, 2, "adamw")])
def test_mesh_runs_match_one_device(tiny_config, tmp_path, one_device, data, model,
                                    param_dims, optimizer):
  single = one_device(tiny_config, optimizer)
  sharded = run(tiny_config, tmp_path / "mesh", data=data, model=model,
                param_dims=param_dims, optimizer=optimizer, save_every=100)
  assert int(sharded.state.step) == 6
  np.testing.assert_allclose(sharded.last_metrics["loss"], single.last_metrics["loss"],
                             rtol=1e-5)
  assert_trees_close(sharded.state.params, single.state.params)
  kernel = sharded.state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  expected = jax.sharding.NamedSharding(
      kernel.sharding.mesh, jax.sharding.PartitionSpec(
          *(("data", "model") if param_dims == 2 else (None, "model"))))
  assert kernel.sharding.is_equivalent_to(expected, kernel.ndim)


def test_microbatched_accumulation_equals_full_batch(tiny_config, tmp_path, one_device):
  full = one_device(tiny_config, steps=4)
  micro = run(tiny_config, tmp_path / "micro", steps=4, microbatches=4, save_every=100)
  np.testing.assert_allclose(micro.last_metrics["loss"], full.last_metrics["loss"],
                             rtol=1e-5)
  assert_trees_close(micro.state.params, full.state.params)


def _device_bytes(arrays) -> int:
  """Bytes the arrays hold on devices (every shard and replica)."""
  return sum(shard.data.nbytes for x in arrays for shard in x.addressable_shards)


def test_checkpoint_restores_onto_a_different_mesh(tiny_config, tmp_path, one_device,
                                                   monkeypatch):
  # FSDP on 8x1 (the step test_mesh_runs_match_one_device compiled), then 2x4.
  first = run(tiny_config, tmp_path / "m", data=8, model=1, param_dims=2, steps=6)
  saved = jax.device_get(first.state)
  del first
  # The restore builds nothing first (no initialisation, no optimizer state) and
  # leaves exactly one copy of the state on the devices.
  monkeypatch.setattr(partitioning.Partitioner, "init", _no_init)
  seen = {}
  restore = checkpoints.Checkpointer.restore

  def measured(self, step, target):
    gc.collect()
    seen["before"] = _device_bytes(jax.live_arrays())
    out = restore(self, step, target)
    gc.collect()
    seen["after"] = _device_bytes(jax.live_arrays())
    seen["state"] = _device_bytes(jax.tree.leaves(out[0]))
    seen["layout"] = jax.tree.map(lambda x: x.sharding, out[0])
    seen["target"] = jax.tree.map(lambda x: x.sharding, target)
    return out
  monkeypatch.setattr(checkpoints.Checkpointer, "restore", measured)
  again = run(tiny_config, tmp_path / "m", data=2, model=4, param_dims=2, steps=6)
  monkeypatch.undo()
  assert seen["after"] - seen["before"] == seen["state"]
  assert seen["layout"] == seen["target"]  # the rules' layout, optimizer leaves too
  assert again.resumed_from == 6
  assert_trees_close(again.state.params, saved.params, rtol=0, atol=0, outliers=0)
  assert_trees_close(again.state.opt_state, saved.opt_state, rtol=0, atol=0, outliers=0)
  kernel = again.state.params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert kernel.sharding.mesh.shape == {"data": 2, "model": 4}
  # Continuing on the new mesh gives the steps an uninterrupted run would take.
  longer = run(tiny_config, tmp_path / "m", data=2, model=4, param_dims=2, steps=9)
  straight = one_device(tiny_config, steps=9)
  assert_trees_close(longer.state.params, straight.state.params)


def _no_init(*args, **kwargs):
  raise AssertionError("a resumed run must not initialise parameters")


def test_checkpoints_keep_k_and_resume(tiny_config, tmp_path, one_device, monkeypatch):
  """Also: device memory goes to metrics.jsonl and TensorBoard where the backend
  reports it (XLA's CPU client does not: each device here reports 1 MiB per step
  taken so far as its peak)."""
  taken = []
  real = platforms.memory_metrics

  def reported(devices):
    taken.append(1)
    return real([types.SimpleNamespace(memory_stats=lambda i=i: {
        "peak_bytes_in_use": (len(taken) + i) << 20, "bytes_in_use": 1 << 20})
                 for i, _ in enumerate(devices)])
  monkeypatch.setattr(platforms, "memory_metrics", reported)
  partial = run(tiny_config, tmp_path / "k", steps=9, stop_after=5)
  assert int(partial.state.step) == 5
  resumed = run(tiny_config, tmp_path / "k", steps=9)
  assert resumed.resumed_from == 5
  straight = one_device(tiny_config, steps=9)
  assert_trees_close(resumed.state.params, straight.state.params, rtol=0, atol=1e-7,
                     outliers=0)
  steps = sorted(int(p.name) for p in (tmp_path / "k" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [6, 9]  # keep=2
  rows = [json.loads(line) for line in (tmp_path / "k" / "metrics.jsonl").open()]
  memory = [(r["step"], r["memory/peak_bytes_per_device"]) for r in rows
            if "memory/peak_bytes_per_device" in r]
  local = jax.local_device_count() - 1
  assert memory == [(s, float((i + 1 + local) << 20)) for i, s in
                    enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9])]
  # Model TFLOP/s per device and MFU from the step's model FLOPs (8 copy
  # examples: 8 input tokens, 9 targets) and the logged step rate.
  step_flops = flops.train_step_flops(tiny_config, 8, 8, 9)
  peak = platforms.peak_flops(jax.devices(), "float32")
  for row in (r for r in rows if "train/steps_per_s" in r):
    achieved = step_flops * row["train/steps_per_s"]
    assert row["train/model_tflops_per_s_per_device"] == pytest.approx(
        achieved / jax.device_count() / 1e12, rel=1e-6)
    assert row["train/mfu"] == pytest.approx(achieved / peak, rel=1e-6)
  # Compute: every step's model FLOPs and real tokens (the copy task has no
  # padding: 8 x 8 inputs and 8 x 9 targets), counted across the resume from
  # the saved totals, never from zero.
  spent = json.loads((tmp_path / "k" / "compute.json").read_text())
  assert spent["train_steps"] == 9 and spent["train_examples"] == 9 * 8
  assert spent["train_tokens"] == 9 * (8 * 8 + 8 * 9)
  assert spent["train_flops"] == 9 * step_flops
  logged = [(r["step"], r["compute/train_flops"], r["compute/train_tokens"]) for r in rows
            if "compute/train_flops" in r]
  assert logged == [(s, s * step_flops, s * 136.0) for s in range(1, 10)]
  files = sorted((tmp_path / "k" / "tensorboard").glob("events.out.tfevents.*"))
  assert files  # one per run (the first and the resumed one)
  tags = {v.tag for path in files
          for event in event_file_loader.EventFileLoader(str(path)).Load()
          for v in event.summary.value}
  assert {"memory/peak_bytes_per_device", "memory/bytes_in_use_per_device"} <= tags


def test_selection_keeps_the_best_evaluation_and_loaders_prefer_it(tiny_config, tmp_path):
  seen = {}
  scripted = {0: 0.1, 2: 0.5, 4: 0.8, 6: 0.7, 8: 0.8}  # the tie at 8 keeps 4

  def hook(params, step):
    seen[step] = jax.device_get(params)
    return {"chain_accuracy": scripted[step]}

  kwargs = dict(steps=8, eval_every=2, eval_fns={"validation": hook},
                select_metric="validation/chain_accuracy")
  run(tiny_config, tmp_path / "s", stop_after=5, **kwargs)
  assert checkpoints.read_best(str(tmp_path / "s"))["step"] == 4
  final = run(tiny_config, tmp_path / "s", **kwargs)  # resumes at 5 and keeps the best
  best = checkpoints.read_best(str(tmp_path / "s"))
  assert (best["step"], best["value"], best["history"]) == (
      4, 0.8, [[s, v] for s, v in scripted.items()])
  exact = dict(rtol=0, atol=0, outliers=0)
  load = lambda p: weights.load(str(p), require_vocabulary=False).params  # noqa: E731
  assert_trees_close(load(tmp_path / "s"), seen[4], **exact)
  assert_trees_close(load(tmp_path / "s" / "checkpoints"), final.state.params, **exact)
  assert_trees_close(load(tmp_path / "s" / "checkpoints" / "6"), seen[6], **exact)
  assert weights.read_checkpoint_meta(str(tmp_path / "s"))["step"] == 4
  with pytest.raises(ValueError, match="not an evaluation metric"):
    run(tiny_config, tmp_path / "t", steps=2, eval_every=2, eval_fns={"validation": hook},
        select_metric="validation/accuracy")


def test_early_stopping_ends_a_converged_run_and_stays_stopped(tiny_config, tmp_path):
  scripted = {2: 0.5, 4: 0.6, 6: 0.6, 8: 0.55, 10: 0.9}  # patience 2: stops at 8

  def hook(params, step):
    del params
    return {"chain_accuracy": scripted[step]} if step else {}  # none for the init

  kwargs = dict(steps=12, eval_every=2, eval_fns={"validation": hook}, save_every=100,
                select_metric="validation/chain_accuracy",
                early_stopping=trainer.EarlyStopping(patience=2))
  result = run(tiny_config, tmp_path / "e", **kwargs)
  assert result.stopped_early == 8 and int(result.state.step) == 8
  best = checkpoints.read_best(str(tmp_path / "e"))
  assert (best["step"], best["stopped_early"]) == (4, 8)
  spent = json.loads((tmp_path / "e" / "compute.json").read_text())
  assert (spent["train_steps"], spent["stopped_early"]) == (8, 8)
  assert spent["train_flops"] == 8 * flops.train_step_flops(tiny_config, 8, 8, 9)
  again = run(tiny_config, tmp_path / "e", **kwargs)  # converged: nothing more to train
  assert int(again.state.step) == 8 and again.stopped_early == 8
  # min_delta: a gain of 0.01 is not an improvement, so 0.51 at 4 does not reset.
  scripted.update({4: 0.51, 6: 0.52})
  small = run(tiny_config, tmp_path / "d", **dict(kwargs, early_stopping=trainer.EarlyStopping(
      patience=2, min_delta=0.05)))
  assert small.stopped_early == 6
  with pytest.raises(ValueError, match="early stopping needs a selection metric"):
    run(tiny_config, tmp_path / "n", steps=2, early_stopping=trainer.EarlyStopping(2))


def test_checkpoint_that_does_not_fit_is_named(tiny_config, tmp_path):
  run(tiny_config, tmp_path / "x", steps=3)
  with pytest.raises(ValueError, match="does not fit the current model or optimizer"):
    run(tiny_config, tmp_path / "x", steps=6, optimizer="adafactor")


def test_schedules_by_hand():
  rsqrt = optimizers.make_schedule("rsqrt", learning_rate=1.0, warmup_steps=100)
  assert float(rsqrt(0)) == pytest.approx(0.1) and float(rsqrt(400)) == pytest.approx(0.05)
  cosine = optimizers.make_schedule("cosine", learning_rate=1.0, warmup_steps=10,
                                    total_steps=110)
  assert float(cosine(5)) == pytest.approx(0.5)
  assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
  constant = optimizers.make_schedule("constant", learning_rate=2.0, warmup_steps=0)
  assert float(constant(1000)) == 2.0
  with pytest.raises(ValueError, match="expected one of"):
    optimizers.make_schedule("linear")


def test_initial_params_from_a_hugging_face_folder(tiny_config, tmp_path):
  params = jax.device_get(init_params(tiny_config, 5))
  save_hf_t5(tiny_config, params, str(tmp_path / "hf"))
  partitioner = partitioning.Partitioner(partitioning.create_mesh(2, 4))
  placed = {}

  def load(shardings):
    placed["params"] = weights.load(str(tmp_path / "hf"), model=tiny_config,
                                    require_vocabulary=False, shardings=shardings).params
    placed["shardings"] = shardings
    return placed["params"]
  result = trainer.train(
      model=EncoderDecoderModel(tiny_config), objective=objectives.TokenCrossEntropy(EncoderDecoderModel(tiny_config)),
      optimizer=optimizers.make_optimizer("adamw", optimizers.make_schedule(
          "constant", learning_rate=1e-3, warmup_steps=0)),
      partitioner=partitioner, batch_fn=copy_task(128, 8), global_batch_size=8,
      train_steps=1, model_dir=str(tmp_path / "run"), initial_params=load,
      progress=False, stop_after=0)
  # Loaded straight into the rules' shardings, one tensor at a time.
  for x, sharding in zip(jax.tree.leaves(placed["params"]), jax.tree.leaves(
      placed["shardings"])):
    assert x.sharding == sharding
  assert_trees_close(result.state.params, params, rtol=0, atol=0, outliers=0)
  with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH=.*: mlp_dim=64 in the "
                                       "checkpoint, but the model config has 96"):
    weights.load(str(tmp_path / "hf"), model=tiny_config.replace(mlp_dim=96),
                 require_vocabulary=False, binding="INITIAL_CHECKPOINT_PATH")


def test_sigterm_saves_at_the_next_step_and_resumes_exactly(tiny_config, tmp_path,
                                                            one_device):
  # A real SIGTERM to this process during step 4's batch: the step finishes,
  # is saved (save_every=3 would not save it), and training stops; running it
  # again resumes there and takes the steps an uninterrupted run takes.
  source = copy_task(tiny_config.vocab_size, 8)

  def batch_fn(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return source(step)

  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Preempted, match="training saved at step 4"):
    run(tiny_config, tmp_path / "p", steps=9, batch_fn=batch_fn)
  assert checkpoints.Checkpointer(str(tmp_path / "p" / "checkpoints"),
                                  create=False).all_steps() == [3, 4]
  assert signal.getsignal(signal.SIGTERM) == before  # the handler is gone
  resumed = run(tiny_config, tmp_path / "p", steps=9)
  assert resumed.resumed_from == 4
  straight = one_device(tiny_config, steps=9)
  assert_trees_close(resumed.state.params, straight.state.params, rtol=0, atol=1e-7,
                     outliers=0)
