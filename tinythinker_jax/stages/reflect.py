"""TinyThinker's phase 2, sample -> pairs -> DPO -> validate, iterated (`tinythinker reflect`).

k rounds (TinyThinker's iterations, 5 by default). Round r samples the
policy's own chains into preference pairs (`sample.sample`), then trains
DPO/RPO from that policy as reference (`train.run_dpo`: 10 epochs, the greedy
TinyThinker chain accuracy on the validation split every epoch, the best
evaluation kept as the round's model). The round's best is the next round's
sampler and reference (`next_policy='round_best'`, as TinyThinker's script
runs it, even when it validates below an earlier round), or the best of all
rounds so far (`'overall_best'`). The run's result is the best of all rounds,
phase 1's model included. Resumable between and within rounds
(`reflect_state.json`).

`objective='rft'` runs the rejection-sampling baseline (STaR/RFT) with the
same rounds, sampler and selection: each round trains the ordinary
three-stage loss on the policy's own chains that reached the gold option
(`reasoning.rejection`), from the same samples that would build the pairs
(`reuse_samples` points a round at another run's samples of the same
policy). `train_budgets` gives each round's training budget in model FLOPs
(the pipeline passes self-reflection's, round by round). Each round records
what it spent (`compute`: sampling and training) in the state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import jax

from tinythinker_jax import checkpoints, errors
from tinythinker_jax import compute as compute_lib
from tinythinker_jax import paths, seeds, weights
from tinythinker_jax import student as student_lib
from tinythinker_jax.stages import infer as infer_lib
from tinythinker_jax.stages import phase1, phase2
from tinythinker_jax.stages import sample as sample_lib
from tinythinker_jax.stages import validation as validation_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.data import schema
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import registry, rejection
from tinythinker_jax.reasoning.formats import Format
from tinythinker_jax.training import recipe

OBJECTIVES = ("dpo", "rft")


@dataclasses.dataclass(frozen=True)
class RftSettings:
  """The rejection-sampling rounds' training (gin: `reflect.RftSettings`): the
  three-stage loss on the student's own correct chains, interleaved as phase 1,
  selected by validation as self-reflection is."""

  train: recipe.TrainSettings = recipe.TrainSettings(
      batch_size=32, num_epochs=10.0, optimizer="adamw", schedule="cosine",
      learning_rate=1e-4, warmup_fraction=0.1, max_grad_norm=1.0, z_loss=1e-4,
      dropout_rate=0.0, keep_checkpoints=1, evaluations=10)
  input_length: int = 256
  target_length: int = 128
  interleave_interval: int = 1
  max_per_question: Optional[int] = None  # correct chains kept per question


def _rft_train(round_dir, policy_dir: str, samples_dir, questions: Sequence[Example],
               dataset: str, settings: RftSettings, budget: Optional[float],
               vocabulary: str, validation: validation_lib.ChainValidation,
               progress: bool):
  """One rejection-sampling round's training; returns the train result."""
  loaded = weights.load(policy_dir, vocabulary=vocabulary, with_params=False)
  chains_path = paths.as_path(samples_dir) / sample_lib.CHAINS
  if not chains_path.exists():
    raise errors.MissingFileError(f"{chains_path}: no sampled chains (sampled before "
                                  "chains were stored; sample again in a new folder)")
  sampled = schema.read_records(chains_path, schema.SampledQuestion)
  records = rejection.records(questions, sampled, settings.max_per_question,
                              {"policy": policy_dir, "samples": str(samples_dir)})
  if not records:
    return None
  records_dir = paths.as_path(round_dir) / "rationales"
  spec = registry.get(Format.TINYTHINKER)
  records_file = paths.as_path(spec.records_path(records_dir, dataset, "train"))
  records_file.parent.mkdir(parents=True, exist_ok=True)
  paths.write_jsonl(records_file, records)
  train_settings = settings.train
  if budget is not None:
    train_settings = dataclasses.replace(train_settings, train_steps=None,
                                         num_epochs=None, train_flops=budget,
                                         train_tokens=None)
  num_options = datasets.get_spec(dataset).num_options or 1
  return phase1.run(
      model_dir=str(paths.as_path(round_dir) / "model"), model_config=loaded.config,
      mixture_or_task_name=spec.task_name(dataset),
      task_feature_lengths={"inputs": settings.input_length,
                            "targets": settings.target_length},
      settings=train_settings, records_dir=str(records_dir),
      vocabulary=loaded.vocabulary, initial_checkpoint_path=policy_dir,
      interleave_interval=settings.interleave_interval,
      num_options=num_options, validation=validation, progress=progress)

log = logging.getLogger(__name__)


def validate(model_dir: str, examples: Sequence[Example], answer_type, *,
             output_dir: str, student: student_lib.StudentSettings, vocabulary: str = "",
             progress: bool = True) -> float:
  """Greedy TinyThinker chain accuracy (TinyThinker's model selection)."""
  policy = student_lib.build(model_dir, vocabulary=vocabulary, settings=student)
  records = infer_lib.infer(policy, examples, fmt=Format.TINYTHINKER,
                             answer_type=answer_type, output_dir=output_dir,
                             name="validation", progress=progress)
  return infer_lib.summarize_records(records)["accuracy"]


def run_reflect(*, output_dir: str, initial_model_dir: str, records_path: str,
                dataset: str, dataset_path: str = "", validation_split: str = "validation",
                max_validation_examples: Optional[int] = None,
                max_train_examples: Optional[int] = None, split_seed: int = 0,
                rounds: int = 5, vocabulary: str = "", next_policy: str = "round_best",
                sample_settings: sample_lib.SampleSettings = sample_lib.SampleSettings(),
                dpo_settings: phase2.DpoSettings = phase2.DpoSettings(),
                student: student_lib.StudentSettings = student_lib.StudentSettings(),
                objective: str = "dpo", rft_settings: RftSettings = RftSettings(),
                train_budgets: Optional[Sequence[Optional[float]]] = None,
                reuse_samples: Optional[dict[int, str]] = None,
                progress: bool = True) -> dict[str, Any]:
  """k rounds of sample -> pairs -> DPO (validated every epoch, best kept).

  See the module docstring for which policy samples each round. State is in
  `<output_dir>/reflect_state.json`; a restarted run skips finished rounds,
  and within a round the sampler and trainer resume.
  """
  if next_policy not in ("round_best", "overall_best"):
    raise errors.UserError(f"run_reflect.next_policy={next_policy!r}: 'round_best' or "
                           "'overall_best'")
  if objective not in OBJECTIVES:
    raise errors.UserError(f"run_reflect.objective={objective!r}: one of {OBJECTIVES}")
  chain_validation = validation_lib.ChainValidation(
      dataset=dataset, dataset_path=dataset_path, split=validation_split,
      split_seed=split_seed, max_examples=max_validation_examples, format="tinythinker",
      batch_size=student.batch_size)
  output_dir = paths.as_path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  state_path = output_dir / "reflect_state.json"
  state: dict[str, Any] = {"rounds": [], "best": None}
  if state_path.exists():
    state = paths.read_json(state_path)
  questions, teacher = sample_lib.read_teacher_records(records_path)
  questions = questions[:max_train_examples] if max_train_examples else questions
  valid, answer_type = datasets.load_split(dataset, dataset_path, validation_split,
                                                split_seed, max_validation_examples)
  if state["best"] is None:
    accuracy = validate(initial_model_dir, valid, answer_type,
                        output_dir=output_dir / "round_0", student=student,
                        vocabulary=vocabulary, progress=progress)
    state["best"] = {"round": 0, "model_dir": paths.absolute_str(initial_model_dir),
                     "validation_accuracy": accuracy}
    state["initial"] = dict(state["best"])
    state["policy"] = dict(state["best"])
    if jax.process_index() == 0:
      paths.write_json(state_path, state)
  for round_index in range(len(state["rounds"]) + 1, rounds + 1):
    round_dir = output_dir / f"round_{round_index}"
    policy_dir = state.get("policy", state["best"])["model_dir"]
    samples_dir = round_dir / "samples"
    reused = (reuse_samples or {}).get(round_index)
    if reused:
      samples_dir = paths.as_path(reused)
      summary = paths.read_json(samples_dir / "summary.json")
    else:
      policy = student_lib.build(policy_dir, vocabulary=vocabulary, settings=student)
      settings = dataclasses.replace(
          sample_settings, seed=seeds.derive(sample_settings.seed, "reflect_round",
                                             round_index))
      summary = sample_lib.sample(policy, questions, teacher, output_dir=samples_dir,
                                  settings=settings, progress=progress)
      del policy
    record: dict[str, Any] = {"round": round_index, "policy": policy_dir,
                              "samples": summary, "objective": objective}
    if reused:
      record["samples_reused_from"] = str(samples_dir)
    budget = (train_budgets[round_index - 1]
              if train_budgets and round_index <= len(train_budgets) else None)
    model_dir = str(round_dir / "model")
    result = None
    if objective == "dpo" and summary["pairs"] == 0:
      record["skipped"] = "no preference pairs: every sampled chain agreed"
    elif objective == "dpo":
      result = phase2.run_dpo(model_dir=model_dir,
                       pairs_path=samples_dir / "pairs.jsonl",
                       initial_checkpoint_path=policy_dir, settings=dpo_settings,
                       vocabulary=vocabulary, validation=chain_validation,
                       progress=progress)
    elif budget is not None and budget <= 0:
      record["skipped"] = "no training budget (self-reflection trained nothing this round)"
    else:
      result = _rft_train(round_dir, policy_dir, samples_dir, questions, dataset,
                          rft_settings, budget, vocabulary, chain_validation, progress)
      if result is None:
        record["skipped"] = "no sampled chain reached the gold option"
    spent = compute_lib.Compute.from_json(summary.get("compute"))
    if result is not None:
      spent = spent + compute_lib.read(model_dir)
      selected = checkpoints.read_best(model_dir)
      if selected is None:  # No evaluations during training: validate the end.
        accuracy = validate(model_dir, valid, answer_type, output_dir=round_dir,
                            student=student, vocabulary=vocabulary, progress=progress)
        selected = {"step": int(result.state.step), "value": accuracy, "history": []}
      record.update(model_dir=paths.absolute_str(model_dir),
                    validation_accuracy=selected["value"], best_step=selected["step"],
                    validation_history=selected.get("history", []),
                    train_metrics=result.last_metrics)
      this_round = {"round": round_index, "model_dir": paths.absolute_str(model_dir),
                    "validation_accuracy": selected["value"]}
      if selected["value"] > state["best"]["validation_accuracy"]:
        state["best"] = dict(this_round)
      state["policy"] = dict(this_round if next_policy == "round_best" else
                             state["best"])
    record["compute"] = spent.to_json()
    state["rounds"].append(record)
    state["compute"] = sum((compute_lib.Compute.from_json(r.get("compute"))
                            for r in state["rounds"]), compute_lib.Compute()).to_json()
    if jax.process_index() == 0:
      paths.write_json(state_path, state)
    log.info("round %d: %s; best is round %d (%.3f)", round_index,
             record.get("validation_accuracy", record.get("skipped")),
             state["best"]["round"], state["best"]["validation_accuracy"])
  return state
