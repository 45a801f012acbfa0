"""Phase 2: DPO/RPO/IPO from a reference policy on its own preference pairs
(`tinythinker train --gin_file=runs/dpo.gin`; `stages.reflect` iterates it).

Recall and analyze batches are interleaved in proportion to their pairs; the
trainer, checkpoints and metrics are phase 1's (`training.recipe.fit`), with
`training.dpo.PreferenceObjective` as the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tinythinker_jax import errors, paths, weights
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import arrays, pair_arrays
from tinythinker_jax.stages import validation as validation_lib
from tinythinker_jax.stages.phase1 import initial_params
from tinythinker_jax.training import dpo, recipe, trainer


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
            model_config: Any = None,
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
  reference = weights.load(initial_checkpoint_path, model=model_config,
                           vocabulary=vocabulary, binding="INITIAL_CHECKPOINT_PATH",
                           with_params=False)
  codec = vocabularies.text_codec(reference.vocabulary)
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

  def objective_fn(model):
    return dpo.PreferenceObjective(model, beta=settings.beta, alpha=settings.alpha,
                                   loss_type=settings.loss_type,
                                   z_loss=settings.train.z_loss,
                                   nll_normalization=settings.nll_normalization)

  def eval_fns(objective, partitioner, local):
    del objective, local
    if not validation.enabled:
      return {}
    return {validation_lib.HOOK: validation_lib.chain_accuracy_hook(
        validation, model=reference.model, vocabulary=reference.vocabulary,
        partitioner=partitioner, input_length=settings.input_length,
        target_length=settings.target_length, model_dir=model_dir)}

  return recipe.fit(
      model=reference.model, objective_fn=objective_fn, datasets=datasets,
      schedule=recipe.proportional_schedule(manifest["counts"], pair_arrays.STAGES),
      settings=settings.train, model_dir=model_dir,
      initial_params=initial_params(initial_checkpoint_path, reference.model,
                                     "INITIAL_CHECKPOINT_PATH", reference.vocabulary),
      eval_fns=eval_fns, eval_at_start=False,
      progress=progress, stop_after=stop_after,
      binding="DpoSettings.train",
      meta={"phase": "dpo", "reference": paths.absolute_str(initial_checkpoint_path),
            "pairs": paths.absolute_str(pairs_path), "vocabulary": reference.vocabulary,
            "pairs_by_stage": manifest.get("pairs", manifest["counts"]),
            "packed": settings.pack}).result


