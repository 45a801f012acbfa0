"""`tinythinker train`: phase 1 (rationales) or phase 2 (preference pairs).

Both phases go through `training.recipe.fit` with a `TrainSettings` (optimizer,
schedule, clipping, z-loss, microbatching, mesh and partitioning rules,
checkpoints); they differ only in the model's loss and the data.

- `run` (gin: `runs/sft.gin`): phase 1. Its data comes from seqio tasks named
  t5x-style (`MIXTURE_OR_TASK_NAME`), materialised once into
  `<model_dir>/data` (`materialize.prepare_data`). TinyThinker's stage
  mixtures train on the interleaved schedule (`interleave_interval`,
  `num_options`); other mixtures interleave whole batches of their tasks in
  proportion to the mixture's seqio rates. `pack` (gin: `PACK`) packs several
  examples per row as seqio's `EncDecFeatureConverter(pack=True)` does; batch
  sizes and epochs then count packed rows, as in t5x.
- `run_dpo` (gin: `runs/dpo.gin`): phase 2, DPO/RPO/IPO from a reference
  policy on its own preference pairs (`tinythinker sample`), recall and
  analyze batches interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from tinythinker_jax import errors, gin_utils, materialize, partitioning, paths
from tinythinker_jax import student as student_lib
from tinythinker_jax import validation as validation_lib
from tinythinker_jax import vocabularies
from tinythinker_jax.data import arrays, pair_arrays
from tinythinker_jax.models import t5
from tinythinker_jax.training import dpo, models, recipe, trainer

STAGES = ("recall", "analyze", "summarize")


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


def _initial_params(path: Optional[str], config: t5.T5Config, binding: str):
  if not path:
    return None
  return lambda shardings: student_lib.load(
      path, model_config=config, require_vocabulary=False, binding=binding,
      shardings=shardings).params


def _absolute(path: str) -> str:
  return path if path == vocabularies.BYTE else paths.absolute_str(path)


# ------------------------------------------------------------------ phase 1


def stream_schedule(manifest: Mapping[str, Any], sizes: Mapping[str, int],
                    interleave_interval: Optional[int] = None,
                    num_options: Optional[int] = None
                    ) -> Optional[arrays.InterleavedSchedule]:
  """Which stream (task) each step's batch comes from.

  TinyThinker's stages with `interleave_interval`: its interleaved schedule.
  Otherwise a mixture's tasks take whole batches in proportion to the
  mixture's seqio rates (as recorded in the manifest; a manifest written
  before rates were recorded: to the tasks' sizes).
  """
  if interleave_interval:
    stages = tuple(s for s in STAGES if s in sizes)
    if set(stages) != set(sizes):
      raise errors.UserError(f"INTERLEAVE_INTERVAL needs TinyThinker stage tasks; got "
                             f"{sorted(sizes)}")
    return arrays.InterleavedSchedule.tinythinker(interleave_interval, num_options or 1,
                                                  stages)
  rates = manifest.get("rates")
  weights = ({_stream_name(t): r for t, r in rates.items() if _stream_name(t) in sizes}
             if rates else dict(sizes))
  return recipe.proportional_schedule(weights, sorted(sizes))


def run(*, model_dir: str, model_config: t5.T5Config, mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        settings: recipe.TrainSettings = recipe.TrainSettings(),
        records_dir: str = "", vocabulary: str = "", data_dir: Optional[str] = None,
        label_smoothing: float = 0.0,
        loss_normalizing_factor: Any = models.NUM_REAL_TARGET_TOKENS,
        initial_checkpoint_path: Optional[str] = None,
        interleave_interval: Optional[int] = None, num_options: Optional[int] = None,
        coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
        process_id: Optional[int] = None,
        validation: validation_lib.ChainValidation = validation_lib.ChainValidation(),
        pack: bool = False, progress: bool = True,
        stop_after: Optional[int] = None) -> trainer.TrainResult:
  """Runs phase 1 as configured; see `gin_configs/runs/sft.gin` for every setting.

  With `validation` naming a dataset, every `eval_every` steps also runs the
  student's greedy chains on its split and keeps the best checkpoint by that
  accuracy (both papers' model selection).
  """
  if coordinator_address and not jax.distributed.is_initialized():
    partitioning.initialize_distributed(
        None if coordinator_address == "auto" else coordinator_address, num_processes,
        process_id)
  root = paths.as_path(data_dir or paths.as_path(model_dir) / "data")
  manifest = materialize.prepare_data(mixture_or_task_name, task_feature_lengths, root,
                                      records_dir=records_dir, vocabulary=vocabulary,
                                      pack=pack)
  if model_config.vocab_size < manifest["vocab_size"]:
    raise errors.UserError(f"NUM_EMBEDDINGS={model_config.vocab_size} is smaller than "
                           f"the tasks' vocabulary ({manifest['vocab_size']} tokens)")
  train_sets = {_stream_name(t): arrays.ArrayDataset(root / t / "train")
                for t, splits in manifest["tasks"].items() if "train" in splits}
  if not train_sets:
    raise errors.UserError(f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r}: no task has "
                           "a train split")
  schedule = stream_schedule(manifest, {n: d.num_examples for n, d in train_sets.items()},
                             interleave_interval, num_options)

  loss_validation = {f"eval/{_stream_name(task)}": root / task / "validation"
                for task, splits in manifest["tasks"].items() if "validation" in splits}

  vocabulary_path = _absolute(vocabulary or os.environ.get("TINYTHINKER_VOCAB", ""))

  def eval_fns(model, partitioner, local):
    if not (settings.eval_every or settings.eval_every_epochs or settings.evaluations):
      return {}
    hooks = {name: trainer.evaluate_loss(model, partitioner, _eval_batches(
        arrays.ArrayDataset(path), settings.batch_size, local, settings.eval_batches))
             for name, path in loss_validation.items()}
    if validation.enabled:
      hooks[validation_lib.HOOK] = validation_lib.chain_accuracy_hook(
          validation, model_config=model_config, vocabulary=vocabulary_path,
          partitioner=partitioner, input_length=task_feature_lengths["inputs"],
          target_length=task_feature_lengths["targets"], model_dir=model_dir,
          skip_initial=not initial_checkpoint_path)
    return hooks

  def model_fn(config):
    return models.EncoderDecoderModel(t5.T5(config), z_loss=settings.z_loss,
                                      label_smoothing=label_smoothing,
                                      loss_normalizing_factor=loss_normalizing_factor)

  return recipe.fit(
      model_fn=model_fn, model_config=model_config, datasets=train_sets,
      schedule=schedule, settings=settings, model_dir=model_dir,
      initial_params=_initial_params(initial_checkpoint_path, model_config,
                                     "INITIAL_CHECKPOINT_PATH"),
      eval_fns=eval_fns, progress=progress, stop_after=stop_after,
      meta={"phase": "sft", "mixture_or_task_name": mixture_or_task_name,
            "task_feature_lengths": dict(task_feature_lengths),
            "vocabulary": vocabulary_path, "packed": bool(pack)}).result


# ------------------------------------------------------------------ phase 2


@dataclasses.dataclass(frozen=True)
class DpoSettings:
  """Phase 2's loss and lengths; `train` is how it is trained.

  TinyThinker's recipe: RPO, beta 0.5, alpha 0.5, AdamW lr 5e-6, batch 32,
  cosine with 10% warm-up, clipping at 1.0 (the HF Trainer's), 10 epochs over
  the pairs with the validation chain accuracy every epoch (its
  `strategy_interval` cycle) and the best evaluation kept. `pack` packs
  pairs several per row (`data.pair_arrays`); batches and epochs then count
  rows, not pairs, unlike TRL's.
  """

  beta: float = 0.5
  alpha: float = 0.5
  loss_type: str = dpo.SIGMOID
  # RPO's NLL over all chosen tokens of the batch (TRL 0.9.6) or per sequence.
  nll_normalization: str = dpo.BATCH_TOKENS
  input_length: int = 256
  target_length: int = 128
  pack: bool = False
  train: recipe.TrainSettings = recipe.TrainSettings(
      batch_size=32, num_epochs=10.0, optimizer="adamw", schedule="cosine",
      learning_rate=5e-6, warmup_fraction=0.1, max_grad_norm=1.0, z_loss=0.0,
      dropout_rate=0.0, keep_checkpoints=1, eval_every_epochs=1.0)


def run_dpo(*, model_dir: str, pairs_path: str, initial_checkpoint_path: str,
            settings: DpoSettings = DpoSettings(), vocabulary: str = "",
            model_config: Optional[t5.T5Config] = None,
            validation: validation_lib.ChainValidation = validation_lib.ChainValidation(),
            progress: bool = True, stop_after: Optional[int] = None
            ) -> trainer.TrainResult:
  """Phase-2 training from the reference policy on its own preference pairs.

  With `validation` naming a dataset, the greedy chain accuracy on its split
  is measured every `eval_every`(`_epochs`) and the best evaluation's
  parameters are the model dir's best checkpoint (TinyThinker's selection;
  the reference itself is not a candidate: `tinythinker reflect` compares
  rounds).
  """
  # The config and vocabulary now; the parameters are restored onto the mesh by
  # the trainer (`initial_params`), not gathered here.
  reference = student_lib.load(initial_checkpoint_path, model_config=model_config,
                               vocabulary=vocabulary, binding="INITIAL_CHECKPOINT_PATH",
                               with_params=False)
  codec = vocabularies.TextCodec(reference.vocabulary)
  data_dir = paths.as_path(model_dir) / "data"
  manifest = pair_arrays.prepare(pairs_path, data_dir, codec,
                                 settings.input_length, settings.target_length,
                                 pack=settings.pack)
  if not manifest["counts"]:
    raise errors.UserError(
        f"PAIRS_PATH={pairs_path}: no preference pairs fit input_length="
        f"{settings.input_length}/target_length={settings.target_length} (dropped: "
        f"{manifest['dropped']})")
  datasets = {s: arrays.ArrayDataset(data_dir / s,
                                     dpo.PACKED_PREFERENCE_FEATURES if settings.pack
                                     else dpo.PREFERENCE_FEATURES)
              for s in manifest["counts"]}

  def model_fn(config):
    return dpo.PreferenceModel(t5.T5(config), beta=settings.beta, alpha=settings.alpha,
                               loss_type=settings.loss_type, z_loss=settings.train.z_loss,
                               nll_normalization=settings.nll_normalization)

  def eval_fns(model, partitioner, local):
    del model, local
    if not validation.enabled:
      return {}
    return {validation_lib.HOOK: validation_lib.chain_accuracy_hook(
        validation, model_config=reference.config, vocabulary=reference.vocabulary,
        partitioner=partitioner, input_length=settings.input_length,
        target_length=settings.target_length, model_dir=model_dir)}

  return recipe.fit(
      model_fn=model_fn, model_config=reference.config, datasets=datasets,
      schedule=recipe.proportional_schedule(manifest["counts"], pair_arrays.STAGES),
      settings=settings.train, model_dir=model_dir,
      initial_params=_initial_params(initial_checkpoint_path, reference.config,
                                     "INITIAL_CHECKPOINT_PATH"),
      eval_fns=eval_fns, eval_at_start=False,
      progress=progress, stop_after=stop_after,
      binding="DpoSettings.train",
      meta={"phase": "dpo", "reference": paths.absolute_str(initial_checkpoint_path),
            "pairs": paths.absolute_str(pairs_path), "vocabulary": reference.vocabulary,
            "pairs_by_stage": manifest.get("pairs", manifest["counts"]),
            "packed": settings.pack}).result


# ------------------------------------------------------------------ binary


def _add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--stop_after", type=int, default=None,
                      help="stop (after checkpointing) at this step, e.g. to test "
                      "resumption")


def _train(args: argparse.Namespace, bindings: list[str]) -> int:
  # Joins the cluster (COORDINATOR_ADDRESS) and checks REQUIRED_PLATFORM.
  gin_utils.parse_flags(args, bindings, "runs/sft.gin")
  import gin  # pylint: disable=import-outside-toplevel
  fn = gin_utils.resolve(gin_utils.query_or("TRAIN_RUN")) or gin.get_configurable(run)
  model_dir = gin_utils.query("MODEL_DIR")
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
  result = fn(stop_after=args.stop_after)
  if jax.process_index() == 0:
    gin_utils.write_operative_config(model_dir)
    print(f"step {int(result.state.step)}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(result.last_metrics.items())))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker train", _add_flags, _train, argv,
                       "train a student: phase 1 on rationales (runs/sft.gin) or "
                       "phase 2's DPO/RPO on preference pairs (runs/dpo.gin)")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
