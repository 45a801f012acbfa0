"""Phase 1 (supervised fine-tuning on rationales), assembled from configuration.

`run` is what `tinythinker train` calls with gin (`gin_configs/runs/sft.gin`).
Its data comes from seqio tasks named t5x-style (`MIXTURE_OR_TASK_NAME`): the
first run materialises each task's splits into `<model_dir>/data` (needs
seqio/TensorFlow) and records the mixture's expansion in a manifest, so later
runs, and hosts without TensorFlow, read the arrays directly. TinyThinker's
stage mixtures train on the interleaved schedule (`interleave_interval`,
`num_options`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from tinythinker_jax import partitioning, shards
from tinythinker_jax.data import arrays
from tinythinker_jax.models import t5
from tinythinker_jax.training import models, optimizers, trainer

MANIFEST = "manifest.json"
STAGES = ("recall", "analyze", "summarize")


def _expand(name: str) -> list[str]:
  import seqio  # pylint: disable=import-outside-toplevel
  import tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or "
                     f"mixture ({e})") from e
  return [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [
      provider.name]


def prepare_data(mixture_or_task_name: str, feature_lengths: Mapping[str, int],
                 data_dir: str, splits: Sequence[str] = ("train", "validation"),
                 records_dir: str = "", vocabulary: str = "") -> dict[str, Any]:
  """Materialises the tasks' splits once; returns the manifest."""
  manifest_path = os.path.join(data_dir, MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if (manifest["name"] == mixture_or_task_name and
        manifest["feature_lengths"] == dict(feature_lengths)):
      return manifest
  if jax.process_index() == 0:
    # The registered tasks find their files and vocabulary through these.
    if records_dir:
      os.environ["TINYTHINKER_RECORDS_DIR"] = records_dir
    if vocabulary:
      os.environ["TINYTHINKER_VOCAB"] = vocabulary
    from tinythinker_jax import seqio_arrays  # pylint: disable=import-outside-toplevel
    import seqio  # pylint: disable=import-outside-toplevel
    names = _expand(mixture_or_task_name)
    manifest = {"name": mixture_or_task_name, "feature_lengths": dict(feature_lengths),
                "tasks": {}}
    for name in names:
      vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
      manifest["vocab_size"] = vocab.vocab_size
      manifest["tasks"][name] = {}
      for split in splits:
        try:
          meta = seqio_arrays.materialize(name, split, feature_lengths,
                                         os.path.join(data_dir, name, split))
        except FileNotFoundError:
          continue  # That split has no records (e.g. no validation rationales).
        except seqio_arrays.EmptySplitError:
          if split == "train":
            raise
          print(f"warning: {name} {split}: no examples; training goes on without them",
                file=sys.stderr)
          continue
        manifest["tasks"][name][split] = meta["num_examples"]
        if meta["examples_at_length_limit"]:
          message = (f"{name} {split}: {meta['examples_at_length_limit']} of "
                     f"{meta['num_examples']} examples reach TASK_FEATURE_LENGTHS="
                     f"{dict(feature_lengths)} and are truncated at the end (a "
                     "TinyThinker stage input loses its cue); raise TASK_FEATURE_LENGTHS")
          logging.warning(message)
          print(f"warning: {message}", file=sys.stderr)
          manifest.setdefault("truncated", {})[f"{name}/{split}"] = \
              meta["examples_at_length_limit"]
    os.makedirs(data_dir, exist_ok=True)
    shards.write_json_atomically(manifest_path, manifest)
  shards.sync_processes("tinythinker_prepare_data")
  with open(manifest_path) as f:
    return json.load(f)


def _stream_name(task: str) -> str:
  last = task.rsplit(".", 1)[-1]
  return last if last in STAGES else task


def _eval_batches(dataset: arrays.ArrayDataset, batch_size: int, local: slice,
                  max_batches: int) -> list[dict[str, np.ndarray]]:
  """The first examples in order, in full batches; padding rows weigh nothing."""
  batches = []
  total = min(dataset.num_examples, batch_size * max_batches)
  for start in range(0, total, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < total
    rows = np.where(valid, rows, 0)
    batch = {k: np.asarray(v[rows]) for k, v in dataset.arrays.items()}
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"] * valid[:, None]
    batches.append({k: v[local] for k, v in batch.items()})
  return batches


def load_initial_params(path: str, model_config: t5.T5Config):
  """Parameters from a Hugging Face T5 folder or one of our model dirs."""
  if os.path.exists(os.path.join(path, "config.json")):
    from tinythinker_jax.convert import load_hf_t5  # pylint: disable=import-outside-toplevel
    config, params = load_hf_t5(path)
    for field in ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                  "num_decoder_layers", "vocab_size", "mlp_activations",
                  "logits_via_embedding"):
      if getattr(config, field) != getattr(model_config, field):
        raise ValueError(f"INITIAL_CHECKPOINT_PATH={path}: {field}="
                         f"{getattr(config, field)!r} in its config.json, but the gin model "
                         f"config has {getattr(model_config, field)!r}")
    return params
  from tinythinker_jax import checkpoints  # pylint: disable=import-outside-toplevel
  checkpointer = checkpoints.Checkpointer(os.path.join(path, "checkpoints"))
  try:
    return checkpointer.restore_params()
  except FileNotFoundError:
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH={path}: neither a Hugging Face "
                            "folder (config.json) nor a model dir with checkpoints") from None
  finally:
    checkpointer.close()


def run(*, model_dir: str, model_config: t5.T5Config, mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int], train_steps: int, batch_size: int,
        records_dir: str = "", vocabulary: str = "", data_dir: Optional[str] = None,
        optimizer: str = "adafactor", schedule: str = "rsqrt", learning_rate: float = 1.0,
        warmup_steps: int = 10_000, weight_decay: float = 0.0,
        num_microbatches: int = 1, z_loss: float = 1e-4, label_smoothing: float = 0.0,
        loss_normalizing_factor: Any = models.NUM_REAL_TARGET_TOKENS,
        initial_checkpoint_path: Optional[str] = None, data_parallelism: int = -1,
        model_parallelism: int = 1, parameter_partitioning_dims: int = 1,
        activation_partitioning_dims: int = 1,
        additional_rules: Optional[Sequence[tuple]] = None,
        interleave_interval: Optional[int] = None, num_options: Optional[int] = None,
        checkpoint_every: int = 1000, keep_checkpoints: Optional[int] = 3,
        async_checkpoints: bool = True, eval_every: int = 0, eval_batches: int = 8,
        log_every: int = 10, seed: int = 0, coordinator_address: Optional[str] = None,
        num_processes: Optional[int] = None, process_id: Optional[int] = None,
        progress: bool = True, stop_after: Optional[int] = None) -> trainer.TrainResult:
  """Runs phase 1 as configured; see `gin_configs/runs/sft.gin` for every setting."""
  if coordinator_address and not jax.distributed.is_initialized():
    partitioning.initialize_distributed(
        None if coordinator_address == "auto" else coordinator_address, num_processes,
        process_id)
  manifest = prepare_data(mixture_or_task_name, task_feature_lengths,
                          data_dir or os.path.join(model_dir, "data"),
                          records_dir=records_dir, vocabulary=vocabulary)
  if model_config.vocab_size < manifest["vocab_size"]:
    raise ValueError(f"NUM_EMBEDDINGS={model_config.vocab_size} is smaller than the "
                     f"tasks' vocabulary ({manifest['vocab_size']} tokens)")
  root = data_dir or os.path.join(model_dir, "data")
  train_sets = {_stream_name(t): arrays.ArrayDataset(os.path.join(root, t, "train"))
                for t, splits in manifest["tasks"].items() if "train" in splits}
  if not train_sets:
    raise ValueError(f"{mixture_or_task_name}: no task has a train split")
  schedule_obj = None
  if interleave_interval:
    stages = tuple(s for s in STAGES if s in train_sets)
    if set(stages) != set(train_sets):
      raise ValueError(f"interleave_interval needs TinyThinker stage tasks; got "
                       f"{sorted(train_sets)}")
    schedule_obj = arrays.InterleavedSchedule.tinythinker(interleave_interval,
                                                          num_options or 1, stages)
  elif len(train_sets) > 1:
    names = tuple(sorted(train_sets))
    counts = np.array([train_sets[n].num_examples for n in names], float)
    per_cycle = np.maximum(1, np.round(counts / counts.min())).astype(int)
    schedule_obj = arrays.InterleavedSchedule(names, tuple(int(c) for c in per_cycle))

  mesh = partitioning.create_mesh(data_parallelism, model_parallelism)
  partitioner = partitioning.Partitioner(mesh, partitioning.standard_logical_axis_rules(
      activation_partitioning_dims, parameter_partitioning_dims, additional_rules))
  layout = partitioner.data_layout(batch_size)
  source = arrays.BatchSource(train_sets, batch_size, seed, schedule_obj,
                              local=layout.local_slice)
  lr = optimizers.make_schedule(schedule, learning_rate=learning_rate,
                                warmup_steps=warmup_steps, total_steps=train_steps)
  model = models.EncoderDecoderModel(t5.T5(model_config), z_loss=z_loss,
                                     label_smoothing=label_smoothing,
                                     loss_normalizing_factor=loss_normalizing_factor)
  eval_fns = {}
  for task, splits in manifest["tasks"].items():
    if "validation" in splits and eval_every:
      dataset = arrays.ArrayDataset(os.path.join(root, task, "validation"))
      eval_fns[f"eval/{_stream_name(task)}"] = trainer.evaluate_loss(
          model, partitioner, _eval_batches(dataset, batch_size, layout.local_slice,
                                            eval_batches))
  initial = (None if not initial_checkpoint_path else
             lambda: load_initial_params(initial_checkpoint_path, model_config))
  return trainer.train(
      model=model, model_config=model_config,
      optimizer=optimizers.make_optimizer(optimizer, lr, weight_decay=weight_decay),
      partitioner=partitioner, batch_fn=source, global_batch_size=batch_size,
      train_steps=train_steps, model_dir=model_dir, seed=seed,
      num_microbatches=num_microbatches, dropout=model_config.dropout_rate > 0,
      checkpoint=trainer.CheckpointSettings(checkpoint_every, keep_checkpoints,
                                            async_checkpoints),
      initial_params=initial, log_every=log_every, eval_every=eval_every,
      eval_fns=eval_fns, schedule=lr, progress=progress, stop_after=stop_after,
      meta={"mixture_or_task_name": mixture_or_task_name,
            "task_feature_lengths": dict(task_feature_lengths),
            "vocabulary": _absolute(vocabulary or os.environ.get("TINYTHINKER_VOCAB", ""))})


def _absolute(path: str) -> str:
  return path if not path or "://" in path or path == "byte" else os.path.abspath(path)
