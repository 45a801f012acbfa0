"""Phase 1: a student trained on rationale records (`tinythinker train`, `runs/sft.gin`).

Its data comes from seqio tasks named t5x-style (`MIXTURE_OR_TASK_NAME`),
materialised once into `<model_dir>/data` (`stages.materialize.prepare_data`).
TinyThinker's stage mixtures train on the interleaved schedule
(`interleave_interval`, `num_options`); other mixtures interleave whole
batches of their tasks in proportion to the mixture's seqio rates. `pack`
(gin: `PACK`) packs several examples per row as seqio's
`EncDecFeatureConverter(pack=True)` does; batch sizes and epochs then count
packed rows, as in t5x. Training goes through `training.recipe.fit` (one
path for both phases; phase 2 is `stages.phase2`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from tinythinker_jax import errors, families, partitioning, paths, shards, weights
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import arrays
from tinythinker_jax.stages import materialize
from tinythinker_jax.stages import validation as validation_lib
from tinythinker_jax.reasoning import registry
from tinythinker_jax.reasoning.formats import Format, Stage
from tinythinker_jax.teacher import logprobs as teacher_logprobs
from tinythinker_jax.teacher.pipelines import CACHE as TEACH_CACHE
from tinythinker_jax.training import distillation, objectives, recipe, trainer

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


def initial_params(path: Optional[str], model: Any, binding: str, vocabulary: str = ""):
  """`shardings -> parameters` from `path` (any source `weights.load` reads) for
  `model` (a model or a config), placed as the shardings say; None without a path.
  `vocabulary` is the run's (a pretrained tokenizer reorders an HF or GGUF
  checkpoint's embedding rows)."""
  if not path:
    return None
  return lambda shardings: weights.load(
      path, model=model, vocabulary=vocabulary, require_vocabulary=False,
      binding=binding, shardings=shardings).params


def check_distill_data(distill: distillation.DistillSettings, pack: bool,
                       binding: str = "PACK") -> None:
  """On-policy steps sample one completion per prompt: no packed rows."""
  if pack and distill.on_policy_fraction > 0:
    raise errors.UserError(f"{binding}=True with ON_POLICY_FRACTION="
                           f"{distill.on_policy_fraction}: on-policy distillation samples "
                           "one completion per prompt; turn packing off")


def check_teacher_tokenizer(path: str, vocabulary: str,
                            binding: str = "TEACHER_CHECKPOINT_PATH") -> tuple[Any, int]:
  """(the teacher's model, the shared tokenizer's ids); a clear error unless the
  teacher at `path` has the run's tokenizer (read without its parameters)."""
  own = weights.load(path, require_vocabulary=False, binding=binding, with_params=False)
  return own.model, vocabularies.check_same_tokenizer(own.vocabulary, vocabulary,
                                                      f"{binding}={path}")


def load_teacher(path: str, vocabulary: str, binding: str = "TEACHER_CHECKPOINT_PATH"):
  """(teacher model, the shared tokenizer's ids, `partitioner -> {"teacher":
  (params, shardings)}`) for a distillation teacher at `path`; its own
  tokenizer must be the student's `vocabulary` (`check_teacher_tokenizer`)."""
  model, vocab_rows = check_teacher_tokenizer(path, vocabulary, binding)

  def frozen(partitioner):
    shardings = weights.param_shardings(model, partitioner)
    loaded = weights.load(path, model=model, vocabulary=vocabulary,
                          require_vocabulary=False, binding=binding, shardings=shardings)
    return {"teacher": (loaded.params, shardings)}
  return model, vocab_rows, frozen


def attach_teacher_topk(folders: Sequence[paths.PathLike], cache_paths: Sequence[str],
                        vocabulary: str, vocab_rows: int) -> dict[str, Any]:
  """The stored top-k log-probs of the teacher's chains in `cache_paths` written
  into each train folder (`teacher.logprobs.attach`, once: on process 0, the
  others wait); returns each folder's match statistics."""
  files = []
  for p in cache_paths:
    path = paths.as_path(p)
    # A folder: its caches up to three levels down (<records>/<dataset>/<method>/<split>).
    found = (sorted(f for depth in range(4)
                    for f in path.glob("/".join(["*"] * depth + [TEACH_CACHE])))
             if path.is_dir() else [path])
    if not found:
      raise errors.MissingFileError(f"TEACHER_TOPK_CACHES: {p} holds no "
                                    f"{TEACH_CACHE}")
    files.extend(found)
  cache_paths = [paths.absolute_str(p) for p in files]
  fingerprint = ";".join(f"{p}:{paths.as_path(p).stat().length}" for p in cache_paths)
  stats = {}
  if jax.process_index() == 0:
    chains = teacher_logprobs.chains_from_caches(cache_paths)
    student = teacher_logprobs.StudentTokens(vocabularies.text_codec(vocabulary),
                                             vocab_rows)
    for folder in folders:
      stats[str(folder)] = teacher_logprobs.attach(
          folder, chains, student, fingerprint=fingerprint).to_json()
  shards.sync_processes("tinythinker_attach_teacher_topk")
  return stats


def _absolute(path: str) -> str:
  return path if path == vocabularies.BYTE else paths.absolute_str(path)


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
    stages = tuple(s for s in (st.value for st in Stage) if s in sizes)
    if set(stages) != set(sizes):
      raise errors.UserError(f"INTERLEAVE_INTERVAL needs TinyThinker stage tasks; got "
                             f"{sorted(sizes)}")
    spec = registry.get(Format.TINYTHINKER)
    counts = spec.steps_per_cycle(interleave_interval, num_options or 1)
    return arrays.InterleavedSchedule(stages, tuple(counts[s] for s in stages))
  rates = manifest.get("rates")
  weights = ({registry.stream_name(t): r for t, r in rates.items()
              if registry.stream_name(t) in sizes} if rates else dict(sizes))
  return recipe.proportional_schedule(weights, sorted(sizes))


def run(*, model_dir: str, model_config: Any, mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        settings: recipe.TrainSettings = recipe.TrainSettings(),
        records_dir: str = "", vocabulary: str = "", data_dir: Optional[str] = None,
        label_smoothing: float = 0.0,
        loss_normalizing_factor: Any = objectives.NUM_REAL_TARGET_TOKENS,
        initial_checkpoint_path: Optional[str] = None,
        interleave_interval: Optional[int] = None, num_options: Optional[int] = None,
        coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
        process_id: Optional[int] = None,
        validation: validation_lib.ChainValidation = validation_lib.ChainValidation(),
        pack: bool = False, progress: bool = True,
        stop_after: Optional[int] = None,
        task_weights: Optional[Mapping[str, float]] = None,
        teacher_checkpoint_path: Optional[str] = None,
        distill: distillation.DistillSettings = distillation.DistillSettings(),
        teacher_topk_caches: Sequence[str] = ()
        ) -> trainer.TrainResult:
  """Runs phase 1 as configured; see `gin_configs/runs/sft.gin` for every setting.

  A multi-task format's mixture (Distilling Step-by-Step's
  `tinythinker.<dataset>.step_by_step`) puts every task's rows of the same
  questions in each batch, its loss the tasks' mean token losses weighted by
  `task_weights` (stream -> weight, summing to 1; default equal: alpha = 0.5).

  With `validation` naming a dataset, every `eval_every` steps also runs the
  student's greedy chains on its split and keeps the best checkpoint by that
  accuracy (both papers' model selection).

  With `teacher_checkpoint_path` (one of our model dirs, an HF folder or a
  GGUF file, whose tokenizer is the run's vocabulary; checked. A t5x
  checkpoint stores no config and no tokenizer: convert it to a model dir) the student learns from the
  teacher's distribution as `distill` says (`training.distillation`: offline
  logit distillation on the records' targets, on-policy distillation on its
  own samples); the teacher's parameters sit on the mesh beside the student's.

  With `teacher_topk_caches` (completion caches of a teacher asked for
  `top_logprobs`) the student learns from the top-k log-probs stored with the
  chains instead (offline top-k distillation, `teacher.logprobs`): they are
  attached to the train arrays where the chains appear in the targets, the
  tokenizer checked chain by chain.
  """
  if coordinator_address and not jax.distributed.is_initialized():
    partitioning.initialize_distributed(
        None if coordinator_address == "auto" else coordinator_address, num_processes,
        process_id)
  model = families.from_config(model_config)
  root = paths.as_path(data_dir or paths.as_path(model_dir) / "data")
  manifest = materialize.prepare_data(mixture_or_task_name, task_feature_lengths, root,
                                      records_dir=records_dir, vocabulary=vocabulary,
                                      pack=pack)
  if model_config.vocab_size < manifest["vocab_size"]:
    raise errors.UserError(f"NUM_EMBEDDINGS={model_config.vocab_size} is smaller than "
                           f"the tasks' vocabulary ({manifest['vocab_size']} tokens)")
  vocabulary_path = _absolute(vocabulary or vocabularies.T5_VOCABULARY)
  if teacher_topk_caches and teacher_checkpoint_path:
    raise errors.UserError("TEACHER_TOPK_CACHES and TEACHER_CHECKPOINT_PATH name two "
                           "teachers; distil from one")
  topk_stats = {}
  parsed = registry.parse_task_name(mixture_or_task_name)
  if teacher_topk_caches:
    if isinstance(teacher_topk_caches, str):
      teacher_topk_caches = (teacher_topk_caches,)
    if task_weights or (parsed is not None and parsed.spec.multitask and
                        parsed.stage is None):
      raise errors.UserError(f"TEACHER_TOPK_CACHES: distillation trains one format; "
                             f"{mixture_or_task_name} is multi-task (name one of its "
                             "tasks, e.g. its .explain stage)")
    topk_stats = attach_teacher_topk(
        [root / t / "train" for t, splits in manifest["tasks"].items() if "train" in splits],
        teacher_topk_caches, vocabulary_path, manifest["vocab_size"])
  train_sets = {registry.stream_name(t): arrays.ArrayDataset(root / t / "train")
                for t, splits in manifest["tasks"].items() if "train" in splits}
  if not train_sets:
    raise errors.UserError(f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r}: no task has "
                           "a train split")
  if task_weights is None and parsed is not None and parsed.spec.multitask and \
      parsed.stage is None:
    task_weights = {s.value: 1.0 / len(parsed.spec.stages) for s in parsed.spec.stages}
  if task_weights:
    if interleave_interval:
      raise errors.UserError("INTERLEAVE_INTERVAL is TinyThinker's schedule; a multi-task "
                             f"format ({mixture_or_task_name}) trains every task each step")
    task_weights = {k: float(v) for k, v in task_weights.items()}
    schedule = None
  else:
    schedule = stream_schedule(manifest, {n: d.num_examples for n, d in train_sets.items()},
                               interleave_interval, num_options)

  loss_validation = {f"eval/{registry.stream_name(task)}": root / task / "validation"
                for task, splits in manifest["tasks"].items() if "validation" in splits}

  def eval_fns(objective, partitioner, local):
    if not (settings.eval_every or settings.eval_every_epochs or settings.evaluations):
      return {}
    if isinstance(objective, distillation.DistillationObjective):
      # Validation loss: the records' cross-entropy (the teacher is for training).
      objective = objectives.TokenCrossEntropy(
          objective.model, z_loss=settings.z_loss,
          loss_normalizing_factor=loss_normalizing_factor)
    hooks = {name: trainer.evaluate_loss(objective, partitioner, _eval_batches(
        arrays.ArrayDataset(path), settings.batch_size, local, settings.eval_batches))
             for name, path in loss_validation.items()}
    if validation.enabled:
      hooks[validation_lib.HOOK] = validation_lib.chain_accuracy_hook(
          validation, model=model, vocabulary=vocabulary_path,
          partitioner=partitioner, input_length=task_feature_lengths["inputs"],
          target_length=task_feature_lengths["targets"], model_dir=model_dir,
          skip_initial=not initial_checkpoint_path)
    return hooks

  teacher = frozen_fn = None
  distilled = bool(teacher_checkpoint_path or teacher_topk_caches)
  if distilled:
    binding = ("TEACHER_CHECKPOINT_PATH" if teacher_checkpoint_path else
               "TEACHER_TOPK_CACHES")
    if task_weights:
      raise errors.UserError(f"{binding}: distillation trains one format; "
                             f"{mixture_or_task_name} is multi-task")
    if label_smoothing:
      raise errors.UserError(f"LABEL_SMOOTHING={label_smoothing}: distillation's targets "
                             "are the teacher's distribution; set it to 0")
    check_distill_data(distill, pack)
  if teacher_checkpoint_path:
    teacher, vocab_rows, frozen_fn = load_teacher(teacher_checkpoint_path, vocabulary_path)
  elif teacher_topk_caches:
    vocab_rows = int(manifest["vocab_size"])

  def objective_fn(model):
    if distilled:
      return distillation.DistillationObjective(
          model, teacher, vocab_rows, distill, seed=settings.seed, z_loss=settings.z_loss,
          loss_normalizing_factor=loss_normalizing_factor)
    return objectives.TokenCrossEntropy(model, z_loss=settings.z_loss,
                                        label_smoothing=label_smoothing,
                                        loss_normalizing_factor=loss_normalizing_factor)

  return recipe.fit(
      model=model, objective_fn=objective_fn, datasets=train_sets,
      schedule=schedule, settings=settings, model_dir=model_dir,
      initial_params=initial_params(initial_checkpoint_path, model,
                                     "INITIAL_CHECKPOINT_PATH", vocabulary_path),
      eval_fns=eval_fns, progress=progress, stop_after=stop_after,
      task_weights=task_weights, frozen_fn=frozen_fn,
      meta={"phase": "distill" if distilled else "sft",
            **({"teacher": paths.absolute_str(teacher_checkpoint_path),
                "distill": dataclasses.asdict(distill)} if teacher is not None else {}),
            **({"teacher_topk_caches": [paths.absolute_str(p) for p in teacher_topk_caches],
                "teacher_topk": topk_stats, "distill": dataclasses.asdict(distill)}
               if teacher_topk_caches else {}),
            "mixture_or_task_name": mixture_or_task_name,
            **({"task_weights": task_weights} if task_weights else {}),
            "task_feature_lengths": dict(task_feature_lengths),
            "vocabulary": vocabulary_path, "packed": bool(pack)}).result
