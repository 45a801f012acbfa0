"""The comparisons that come with every self-reflection result, at equal compute.

TinyThinker's claim is a gain of self-reflection over a phase 1 trained to
convergence. A gain measured against anything weaker measures undertraining,
so the pipeline runs, beside phase 1 (stopped by `early_stop_patience`) and
self-reflection (k rounds of sampling and DPO/RPO):

| student | what | compute |
|---|---|---|
| `tinythinker` | phase 1, converged | its own (F1) |
| `tinythinker_reflected` | + self-reflection | F1 + R (R: sampling and training of every round) |
| `tinythinker_continued` | phase 1 continued from its selected checkpoint on the teacher's rationales | F1 + R |
| `tinythinker_rft` | rejection-sampling fine-tuning (STaR/RFT): the same rounds, round 1 on the same samples, trained on the student's own correct chains | F1 + about R (its own later rounds' sampling) |
| `vanilla`, `finetune_cot` (`match_budget`) | trained from the same start, converged or stopped at the budget | at most F1 + R |

The other formats are given the whole budget as a cap: the same early
stopping as phase 1 ends them once converged (an answer-only student stops
long before), and their report gives what they spent. The continued
baseline spends its budget whole.

R counts the sampling (decoding and reference scoring) with
`budget_includes_sampling` (the default: it is compute the method needs),
otherwise the training only. Every student keeps its best checkpoint by
validation chain accuracy, and the starting checkpoint is a candidate of the
continued and RFT runs as phase 1 is of self-reflection's.

Functions here read the pipeline's run state (`pipeline.json`,
`reflect_state.json`, `compute.json`) and return numbers and settings; the
pipeline runs the stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from tinythinker_jax import compute as compute_lib
from tinythinker_jax import paths, registries
from tinythinker_jax.training import recipe

# The baselines self-reflection is compared with, at its compute.
BASELINES: registries.Registry[str] = registries.Registry("baseline")
BASELINES.register("continued", "phase 1 continued for self-reflection's FLOPs")
BASELINES.register("rft", "rejection-sampling fine-tuning on the same samples, same budget")
STUDENT_OF_STAGE = {"tinythinker_reflected": "reflect", "tinythinker_continued": "continued",
                    "tinythinker_rft": "rft"}


UNTRAINED = "untrained"  # the pretrained model itself, evaluated zero-shot


def format_of(student: str) -> str:
  """The format a pipeline student reasons in (`tinythinker_*` are TinyThinker,
  `<format>_distilled` its format's; the untrained model answers the vanilla
  prompt)."""
  if student == UNTRAINED:
    return "vanilla"
  if student.endswith(DISTILLED):
    return student[:-len(DISTILLED)]
  return "tinythinker" if student.startswith("tinythinker_") else student


def reflect_outputs(state: Mapping[str, Any]) -> dict[str, Any]:
  """What the pipeline records of a `run_reflect` state (self-reflection or RFT)."""
  rounds = []
  for r in state["rounds"]:
    row = {k: r.get(k) for k in ("round", "validation_accuracy", "skipped", "model_dir")}
    row["pairs"] = r["samples"]["pairs"]
    row["sampled_chain_accuracy"] = r["samples"].get("sampled_chain_accuracy")
    row["compute"] = r.get("compute")
    rounds.append(row)
  return {"best": state["best"], "initial": state["initial"], "rounds": rounds,
          "compute": state.get("compute")}


def _round_compute(state: Optional[Mapping[str, Any]]) -> list[compute_lib.Compute]:
  return [compute_lib.Compute.from_json(r.get("compute")) for r in (state or {}).get(
      "rounds", [])]


def reflection_flops(state: Optional[Mapping[str, Any]], include_sampling: bool = True
                     ) -> float:
  """Model FLOPs of every round of a `run_reflect` state."""
  return sum(c.train_flops + (c.sample_flops if include_sampling else 0.0)
             for c in _round_compute(state))


def round_train_flops(state: Optional[Mapping[str, Any]]) -> list[float]:
  """Each round's training FLOPs (0 for a round that trained nothing)."""
  return [c.train_flops for c in _round_compute(state)]


def tinythinker_flops(phase1_model_dir: str, reflect_state: Optional[Mapping[str, Any]],
                      include_sampling: bool = True) -> float:
  """The whole TinyThinker budget: phase 1's training plus self-reflection's."""
  return (compute_lib.read(phase1_model_dir).train_flops +
          reflection_flops(reflect_state, include_sampling))


# A student learning from a teacher's distribution is its format's name + this.
DISTILLED = "_distilled"


def budget_settings(settings: recipe.TrainSettings, flops: float,
                    early_stop: bool = False) -> recipe.TrainSettings:
  """`settings` trained for `flops` model FLOPs, the best evaluation kept. With
  `early_stop`, the budget is a cap (the settings' early stopping still ends a
  converged run sooner); without, it is spent whole."""
  return dataclasses.replace(
      settings, train_steps=None, num_epochs=None, train_tokens=None,
      train_flops=max(float(flops), 1.0),
      early_stop_patience=settings.early_stop_patience if early_stop else 0)


def student_compute(run_dir: str, manifest: Mapping[str, Any],
                    students: Mapping[str, str]) -> dict[str, dict[str, Any]]:
  """Each student's total compute from a fresh start (`Compute` as JSON), with
  the wall seconds of the pipeline stages that made it (`stage_seconds`)."""
  stages = manifest.get("stages", {})
  run = paths.as_path(run_dir)

  def state(name: str) -> Optional[dict]:
    path = run / name / "reflect_state.json"
    return paths.read_json(path) if path.exists() else None

  out = {}
  phase1 = compute_lib.read(students["tinythinker"]) if "tinythinker" in students else None
  for name, model_dir in students.items():
    stage = STUDENT_OF_STAGE.get(name)
    if stage is None:
      spent, made_by = compute_lib.read(model_dir), [
          f"distill_{format_of(name)}" if name.endswith(DISTILLED) else f"train_{name}"]
    elif stage == "continued":
      spent = phase1 + compute_lib.read(run / "students" / "tinythinker_continued")
      made_by = ["train_tinythinker", "continued"]
    else:
      spent = phase1 + sum(_round_compute(state(stage)), compute_lib.Compute())
      made_by = ["train_tinythinker", stage]
    out[name] = dict(spent.to_json(), stage_seconds=round(sum(
        stages.get(s, {}).get("seconds", 0.0) for s in made_by), 1))
  return out
