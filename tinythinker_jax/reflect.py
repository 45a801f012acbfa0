"""`tinythinker reflect`: TinyThinker's phase 2, sample -> pairs -> DPO -> validate, iterated.

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
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import jax

from tinythinker_jax import checkpoints, errors, gin_utils
from tinythinker_jax import infer as infer_lib
from tinythinker_jax import sample as sample_lib
from tinythinker_jax import paths, seeds, shards
from tinythinker_jax import student as student_lib
from tinythinker_jax import train as train_lib
from tinythinker_jax import validation as validation_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning.formats import Format

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
                dpo_settings: train_lib.DpoSettings = train_lib.DpoSettings(),
                student: student_lib.StudentSettings = student_lib.StudentSettings(),
                progress: bool = True) -> dict[str, Any]:
  """k rounds of sample -> pairs -> DPO (validated every epoch, best kept).

  See the module docstring for which policy samples each round. State is in
  `<output_dir>/reflect_state.json`; a restarted run skips finished rounds,
  and within a round the sampler and trainer resume.
  """
  if next_policy not in ("round_best", "overall_best"):
    raise errors.UserError(f"run_reflect.next_policy={next_policy!r}: 'round_best' or "
                           "'overall_best'")
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
      shards.write_json_atomically(state_path, state)
  for round_index in range(len(state["rounds"]) + 1, rounds + 1):
    round_dir = output_dir / f"round_{round_index}"
    policy_dir = state.get("policy", state["best"])["model_dir"]
    policy = student_lib.build(policy_dir, vocabulary=vocabulary, settings=student)
    settings = dataclasses.replace(
        sample_settings, seed=seeds.derive(sample_settings.seed, "reflect_round",
                                           round_index))
    summary = sample_lib.sample(policy, questions, teacher, output_dir=round_dir / "samples",
                                settings=settings, progress=progress)
    del policy
    record: dict[str, Any] = {"round": round_index, "policy": policy_dir,
                              "samples": summary}
    if summary["pairs"] == 0:
      record["skipped"] = "no preference pairs: every sampled chain agreed"
    else:
      model_dir = str(round_dir / "model")
      result = train_lib.run_dpo(model_dir=model_dir,
                       pairs_path=round_dir / "samples" / "pairs.jsonl",
                       initial_checkpoint_path=policy_dir, settings=dpo_settings,
                       vocabulary=vocabulary, validation=chain_validation,
                       progress=progress)
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
    state["rounds"].append(record)
    if jax.process_index() == 0:
      shards.write_json_atomically(state_path, state)
    log.info("round %d: %s; best is round %d (%.3f)", round_index,
             record.get("validation_accuracy", record.get("skipped")),
             state["best"]["round"], state["best"]["validation_accuracy"])
  return state


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run(
      "tinythinker reflect", lambda parser: None,
      gin_utils.configured_binary(run_reflect, "runs/reflect.gin", "OUTPUT_DIR"), argv,
      "iterated self-reflection: k rounds of sample -> DPO/RPO -> validate, keeping "
      "the best")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
