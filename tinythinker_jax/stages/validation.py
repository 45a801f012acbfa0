"""Model selection by validation chain accuracy, as both papers' code selects.

A `ChainValidation` names a dataset split; `chain_accuracy_hook` turns it into
a training evaluation hook (`params -> metrics`) that runs the student's greedy
reasoning chains on that split (TinyThinker's staged recall -> analyze ->
summarize for TinyThinker and its ablations, one pass for Fine-tune-CoT and
vanilla) and scores the answers. With it, `recipe.fit` keeps the best
evaluation's parameters as the model dir's best checkpoint
(`TrainSettings.select_metric`), which inference, evaluation, export,
sampling and reflection then load.

The hook decodes with the training mesh's parameters in place (no copy) and
compiles its decode programs once per run. Each evaluation's chains are
written to `<model_dir>/validation/step_<N>.jsonl`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from tinythinker_jax import errors, paths
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import datasets
from tinythinker_jax.partitioning import Partitioner
from tinythinker_jax.reasoning.formats import Format

HOOK = "validation"
CHAIN_ACCURACY = f"{HOOK}/chain_accuracy"


@dataclasses.dataclass(frozen=True)
class ChainValidation:
  """Which split validates chains during training (gin: `validation.ChainValidation`).

  An empty `dataset` turns chain validation off (the trainer then evaluates
  teacher-forced loss only and selects nothing). `format` is the student's
  format ('tinythinker', 'finetune_cot', 'vanilla' or an ablation); the
  pipeline sets it per student.
  """

  dataset: str = ""
  dataset_path: str = ""
  split: str = "validation"
  split_seed: int = 0
  max_examples: Optional[int] = None
  format: str = "tinythinker"
  batch_size: int = 64  # decode rows per call
  write_chains: bool = True

  @property
  def enabled(self) -> bool:
    return bool(self.dataset)


def chain_accuracy_hook(settings: ChainValidation, *, model: Any,
                        vocabulary: str, partitioner: Partitioner, input_length: int,
                        target_length: int, model_dir: paths.PathLike,
                        skip_initial: bool = False):
  """`(params, step) -> {chain_accuracy, format_error_rate, no_answer_rate}` on the
  split, decoded by `model` (a model or its config); with `skip_initial`, nothing at step 0 (a student trained from scratch is
  no candidate there, and its chains would run to the length limit)."""
  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.stages import infer as infer_lib
  from tinythinker_jax import student as student_lib
  if jax.process_count() > 1:
    raise errors.UserError(
        "ChainValidation: chain validation during training runs in one process; on "
        "several hosts set ChainValidation.dataset='' and select afterwards with "
        "`tinythinker evaluate` on each checkpoint")
  if not vocabulary:
    raise errors.UserError("ChainValidation: validating chains needs the vocabulary "
                           "(set VOCABULARY)")
  try:
    fmt = Format(settings.format)
  except ValueError:
    raise errors.UserError(f"ChainValidation.format={settings.format!r} is not one of "
                           f"{[f.value for f in Format]}") from None
  examples, answer_type = datasets.load_split(settings.dataset, settings.dataset_path,
                                              settings.split, settings.split_seed,
                                              settings.max_examples)
  codec = vocabularies.text_codec(vocabulary)
  holder: dict[str, Any] = {}

  def run(params, step: int) -> dict[str, float]:
    if skip_initial and step == 0:
      return {}
    if "student" not in holder:  # Compiled once, reused with each step's params.
      holder["student"] = student_lib.Student(
          model, params, codec, partitioner=partitioner,
          batch_size=settings.batch_size, max_input_length=input_length,
          max_decode_length=target_length)
    policy = holder["student"]
    policy.params = params
    records = infer_lib.infer_records(examples, policy.generate, fmt=fmt,
                                      answer_type=answer_type)
    summary = infer_lib.summarize_records(records)
    if settings.write_chains and jax.process_index() == 0:
      chains_dir = paths.as_path(model_dir) / HOOK
      chains_dir.mkdir(parents=True, exist_ok=True)
      paths.write_jsonl(chains_dir / f"step_{step}.jsonl", records)
    return {"chain_accuracy": summary["accuracy"],
            "format_error_rate": summary["format_error_rate"],
            "no_answer_rate": summary["no_answer_rate"]}

  return run
