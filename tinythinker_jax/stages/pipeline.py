"""Dataset -> distilled students in one run folder (`tinythinker pipeline`, `demo`).

Stages, each in its own subfolder of `run_dir`, in order:

| stage | what | outputs |
|---|---|---|
| `teach` | the teacher's rationales for train and validation (`stages.teach`) | `rationales/<dataset>/<method>/<split>/` |
| `vocab` | a SentencePiece vocabulary on the rendered student texts (unless given) | `vocab/spm.model` |
| `train_<format>` | phase 1 of each TinyThinker format, then (after the baselines) of the other formats (`train.run`) | `students/<format>/` |
| `reflect` | TinyThinker's self-reflection rounds (`reflect.run_reflect`) | `reflect/` |
| `continued` | baseline: phase 1 continued to self-reflection's compute (`baselines`) | `students/tinythinker_continued/` |
| `rft` | baseline: rejection-sampling fine-tuning on the same samples, same budget | `rft/` |
| `evaluate` | greedy and self-consistency accuracy of every student on the test split (and `extra_test_sets`), with each student's compute | `evaluate/<student>/report.{json,md}` |
| `export` | the final TinyThinker (or last) student as a Hugging Face T5 folder | `export/hf_model/` |
| `report` | `report.md` with PNG plots: teacher statistics, accuracies, curves, chains | `report/` |

With `match_budget`, the vanilla and Fine-tune-CoT students may train up to
the compute that TinyThinker's phase 1 and self-reflection spent together
(model FLOPs, `compute`; their early stopping still ends them when converged),
so no row of the comparison had more compute than another.

`pipeline.json` (the manifest) records each finished stage with its outputs and
time. A finished stage is skipped; an unfinished one resumes from what it left
(the teacher's completion cache, orbax checkpoints, evaluation shards, the
reflection state), so a run killed at any point and started again finishes
without redoing finished work.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Optional, Sequence

from tinythinker_jax import errors, paths
from tinythinker_jax import student as student_lib
from tinythinker_jax.stages import baselines as baselines_lib
from tinythinker_jax.stages import phase1
from tinythinker_jax.stages import phase2
from tinythinker_jax.stages import sample as sample_lib
from tinythinker_jax.stages import evaluate as eval_lib
from tinythinker_jax.stages import export as export_lib
from tinythinker_jax.stages import reflect as reflect_lib
from tinythinker_jax.stages import teach as teach_lib
from tinythinker_jax.stages import validation as validation_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.reasoning import registry
from tinythinker_jax.reasoning.formats import Format
from tinythinker_jax.training import recipe as recipe_lib

MANIFEST = "pipeline.json"
# The formats a pipeline trains and evaluates (step-by-step has no chain to evaluate).
FORMATS = tuple(name for name in registry.FORMATS if name != "step_by_step")


# Phase 1 of the pipeline's students, unless `train_settings` says otherwise: AdamW,
# cosine decay with warm-up (TinyThinker's), 1000 steps.
PHASE1 = recipe_lib.TrainSettings(batch_size=64, train_steps=1000, optimizer="adamw",
                                  schedule="cosine", learning_rate=5e-4, warmup_steps=100)


class Manifest:
  """`pipeline.json`: finished stages, written atomically after each one."""

  def __init__(self, run_dir: str, settings: dict[str, Any]):
    self.path = paths.as_path(run_dir) / MANIFEST
    self.data: dict[str, Any] = {"settings": settings, "stages": {}, "runs": 0}
    if self.path.exists():
      saved = paths.read_json(self.path)
      if saved.get("settings") != json.loads(json.dumps(settings)):
        changed = sorted(k for k in set(saved.get("settings", {})) | set(settings)
                         if saved.get("settings", {}).get(k) != json.loads(
                             json.dumps(settings.get(k))))
        raise errors.UserError(f"{self.path}: this run folder was made with other settings "
                         f"({', '.join(changed)}); use a new run folder")
      self.data = saved
    self.data["runs"] = self.data.get("runs", 0) + 1
    self._write()

  def done(self, stage: str) -> bool:
    return stage in self.data["stages"]

  def finish(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
    self.data["stages"][stage] = {"outputs": outputs, "seconds": round(seconds, 1),
                                  "run": self.data["runs"]}
    self._write()

  def outputs(self, stage: str) -> dict[str, Any]:
    return self.data["stages"][stage]["outputs"]

  def _write(self) -> None:
    paths.write_json(self.path, self.data)


def _stage(manifest: Manifest, name: str, fn: Callable[[], dict[str, Any]],
           log: Callable[[str], None]) -> dict[str, Any]:
  if manifest.done(name):
    log(f"[{name}] done before; skipped")
    return manifest.outputs(name)
  log(f"[{name}]")
  start = time.time()
  outputs = fn()
  manifest.finish(name, outputs, time.time() - start)
  return outputs


def _join(directory: paths.PathLike, *parts: str) -> str:
  """A run path as a string (they are recorded in pipeline.json)."""
  return str(paths.as_path(directory).joinpath(*parts))


def _records_dir(run_dir: paths.PathLike) -> str:
  return _join(run_dir, "rationales")


def records_path(run_dir: paths.PathLike, dataset: str, method: str, split: str) -> str:
  """A teacher method's records of a dataset split under the run's rationales."""
  return registry.records_path(_records_dir(run_dir), dataset, method, split)


def run_pipeline(*, run_dir: str, dataset: str, model_config: Any,
                 dataset_path: str = "", teacher: str = "rule_based",
                 teacher_config=None, gguf: str = "", prompts_dir: str = "",
                 finetune_cot_settings=None, tinythinker_settings=None,
                 student_formats: Sequence[str] = ("vanilla", "finetune_cot",
                                                   "tinythinker"),
                 max_train_examples: Optional[int] = None,
                 max_validation_examples: Optional[int] = None,
                 max_test_examples: Optional[int] = None,
                 max_reflect_examples: Optional[int] = None, split_seed: int = 0,
                 vocabulary: str = "", vocab_size: int = 8000,
                 vocab_model_type: str = "unigram",
                 train_settings: recipe_lib.TrainSettings = PHASE1,
                 input_length: int = 256, target_length: int = 128,
                 interleave_interval: int = 100, pack: bool = False,
                 initial_checkpoint_path: Optional[str] = None, reflect_rounds: int = 0,
                 sample_settings: sample_lib.SampleSettings = sample_lib.SampleSettings(),
                 dpo_settings: phase2.DpoSettings = phase2.DpoSettings(),
                 student: student_lib.StudentSettings = student_lib.StudentSettings(),
                 eval_num_runs: int = 5, eval_temperature: float = 0.7,
                 rule_based_settings=None, baselines: Sequence[str] = (),
                 match_budget: bool = False, budget_includes_sampling: bool = True,
                 continued_settings: Optional[recipe_lib.TrainSettings] = None,
                 rft_settings=None,
                 extra_test_sets: Sequence[tuple] = (),
                 export: bool = True, report: bool = True, progress: bool = True,
                 stop_after_stage: Optional[str] = None) -> dict[str, Any]:
  """Runs (or resumes) every stage; returns the manifest.

  Phase 1 of every student format trains with `train_settings` (the same
  `TrainSettings` as `tinythinker train`) on `input_length`/`target_length`
  arrays (packed as seqio packs with `pack`); TinyThinker's stages interleave
  every `interleave_interval` steps.
  With `train_settings.eval_every`, each student's greedy chains are validated
  on the validation split and its best checkpoint is what later stages use
  (`early_stop_patience` stops a student once that accuracy has converged).

  Comparisons (`baselines`, `match_budget`; see `baselines`): 'continued'
  trains phase 1 on from its selected checkpoint for as much compute as
  self-reflection spent (its sampling included with
  `budget_includes_sampling`), 'rft' trains the same rounds on the student's
  own correct chains instead of preference pairs (round 1 on the same
  samples) at each round's training budget; `match_budget` gives the
  vanilla and Fine-tune-CoT students TinyThinker's whole budget as a cap
  (their early stopping still applies).
  `extra_test_sets` are `(name, dataset[, max_examples])` whose test splits
  are evaluated too (e.g. out-of-distribution variants), read from
  `dataset_path`; `max_examples` defaults to `max_test_examples`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    raise errors.UserError("`pipeline` runs on one host (its teach stage calls the teacher "
                     "once); on several hosts run `teach` on one, then `train`, `sample`, "
                     "`reflect` and `evaluate` on all")
  for fmt in student_formats:
    if fmt not in FORMATS:
      raise errors.UserError(f"STUDENT_FORMATS: {fmt!r} is not one of {sorted(FORMATS)}")
  for name in baselines:
    if name not in baselines_lib.BASELINES:
      raise errors.UserError(f"run_pipeline.baselines: {name!r} is not one of "
                             f"{baselines_lib.BASELINES}")
  if (baselines or match_budget) and "tinythinker" not in student_formats:
    raise errors.UserError("run_pipeline.baselines and match_budget compare against the "
                           "TinyThinker student: add 'tinythinker' to STUDENT_FORMATS")
  for entry in extra_test_sets:
    if not 2 <= len(entry) <= 3:
      raise errors.UserError(f"EXTRA_TEST_SETS: {entry!r} is not (name, dataset) or "
                             "(name, dataset, max_examples)")
    datasets.get_spec(entry[1])
  spec = datasets.get_spec(dataset)
  paths.as_path(run_dir).mkdir(parents=True, exist_ok=True)
  settings = {"dataset": dataset, "dataset_path": dataset_path, "teacher": teacher,
              "student_formats": list(student_formats),
              "max_train_examples": max_train_examples, "split_seed": split_seed,
              "model_config": dataclasses.asdict(model_config),
              "train_settings": recipe_lib.jsonable(train_settings),
              "lengths": [input_length, target_length],
              "interleave_interval": interleave_interval,
              **({"pack": True} if pack else {}),  # (runs made before `pack` resume)
              "initial_checkpoint_path": initial_checkpoint_path,
              "reflect_rounds": reflect_rounds}
  # Added only when used, so run folders made before they existed still resume.
  if baselines:
    settings["baselines"] = list(baselines)
  if match_budget:
    settings["match_budget"] = {"includes_sampling": budget_includes_sampling}
  if teacher == "rule_based" and rule_based_settings is not None and (
      not rule_based_settings.exact or rule_based_settings.num_samples > 1):
    settings["rule_based"] = dataclasses.asdict(rule_based_settings)
  manifest = Manifest(run_dir, settings)
  log = print if progress else (lambda _: None)
  methods = sorted({registry.get(f).method for f in student_formats})
  stages_done: list[str] = []

  def stop(name: str) -> bool:
    stages_done.append(name)
    return stop_after_stage == name

  # ---- teach
  teach_settings = {k: v for k, v in (("finetune_cot", finetune_cot_settings),
                                      ("tinythinker", tinythinker_settings),
                                      ("rule_based", rule_based_settings)) if v}

  def teach() -> dict[str, Any]:
    summaries = {}
    for method in methods:
      for split, cap in (("train", max_train_examples),
                         ("validation", max_validation_examples)):
        out = str(paths.as_path(records_path(run_dir, dataset, method, split)).parent)
        summary = teach_lib.teach_dataset(
            dataset=dataset, output_dir=out, dataset_path=dataset_path, split=split,
            method=method, teacher=teacher, teacher_config=teacher_config, gguf=gguf,
            max_examples=cap, seed=split_seed, prompts_dir=prompts_dir,
            progress=progress, **teach_settings)
        summaries[f"{method}/{split}"] = dataclasses.asdict(summary)
        if split == "train" and summary.kept == 0:
          raise errors.UserError(f"teach: the teacher kept no {method} rationales for "
                           f"{dataset} train ({summary.dropped}); see {out}/dropped.jsonl")
    return {"summaries": summaries, "records_dir": _records_dir(run_dir)}
  _stage(manifest, "teach", teach, log)
  if stop("teach"):
    return manifest.data

  # ---- vocabulary
  def vocab() -> dict[str, Any]:
    if vocabulary:
      return {"vocabulary": vocabulary}
    from tinythinker_jax import vocabularies  # pylint: disable=import-outside-toplevel
    texts = []
    for fmt in student_formats:
      texts.extend(vocabularies.iter_rendered(
          [records_path(run_dir, dataset, registry.get(fmt).method, "train")], fmt))
    path = vocabularies.train_sentencepiece(
        texts, vocab_size, _join(run_dir, "vocab", "spm"),
        model_type=vocab_model_type, hard_vocab_limit=False, seed=split_seed)
    return {"vocabulary": paths.absolute_str(path)}
  vocab_path = _stage(manifest, "vocab", vocab, log)["vocabulary"]
  if stop("vocab"):
    return manifest.data

  # ---- phase 1, one student per format: TinyThinker's formats first, so that
  # the other formats can be given its budget (`match_budget`).
  lengths = {"inputs": input_length, "targets": target_length}
  num_options = spec.num_options or 1
  students = {fmt: _join(run_dir, "students", fmt) for fmt in student_formats}

  def train_student(fmt: str, settings: recipe_lib.TrainSettings,
                    model_dir: str, initial: Optional[str]) -> dict[str, Any]:
    staged = registry.get(fmt).staged
    result = phase1.run(
        model_dir=model_dir, model_config=model_config,
        mixture_or_task_name=registry.get(fmt).task_name(dataset),
        task_feature_lengths=lengths, settings=settings,
        records_dir=_records_dir(run_dir), vocabulary=vocab_path,
        initial_checkpoint_path=initial,
        interleave_interval=interleave_interval if staged else None,
        num_options=num_options if staged else None, pack=pack, progress=progress,
        validation=validation_lib.ChainValidation(
            dataset=dataset, dataset_path=dataset_path, split_seed=split_seed,
            max_examples=max_validation_examples, format=fmt,
            batch_size=student.batch_size))
    return {"model_dir": model_dir, "metrics": result.last_metrics,
            "compute": result.compute.to_json(), "stopped_early": result.stopped_early}

  for fmt in [f for f in student_formats if registry.get(f).staged]:
    _stage(manifest, f"train_{fmt}",
           lambda fmt=fmt: train_student(fmt, train_settings, students[fmt],
                                         initial_checkpoint_path), log)
    if stop(f"train_{fmt}"):
      return manifest.data

  # ---- phase 2
  rounds_run = "tinythinker" in student_formats and reflect_rounds > 0
  reflect_kwargs = dict(
      initial_model_dir=students.get("tinythinker", ""),
      records_path=records_path(run_dir, dataset, registry.TINYTHINKER, "train"),
      dataset=dataset, dataset_path=dataset_path,
      max_validation_examples=max_validation_examples,
      max_train_examples=max_reflect_examples or max_train_examples,
      split_seed=split_seed, rounds=reflect_rounds, sample_settings=sample_settings,
      dpo_settings=dpo_settings, student=student, progress=progress)
  if rounds_run:
    def reflect() -> dict[str, Any]:
      state = reflect_lib.run_reflect(output_dir=_join(run_dir, "reflect"),
                                      **reflect_kwargs)
      return baselines_lib.reflect_outputs(state)
    best = _stage(manifest, "reflect", reflect, log)["best"]
    students["tinythinker_reflected"] = best["model_dir"]
    if stop("reflect"):
      return manifest.data

  # ---- baselines at self-reflection's budget
  reflect_state = (paths.read_json(paths.as_path(run_dir) / "reflect" /
                                   "reflect_state.json") if rounds_run else None)
  if "continued" in baselines and rounds_run:
    def continued() -> dict[str, Any]:
      flops = baselines_lib.reflection_flops(reflect_state, budget_includes_sampling)
      settings = baselines_lib.budget_settings(continued_settings or train_settings, flops)
      return dict(train_student("tinythinker", settings,
                                _join(run_dir, "students", "tinythinker_continued"),
                                students["tinythinker"]), budget_flops=flops)
    students["tinythinker_continued"] = _stage(manifest, "continued", continued,
                                               log)["model_dir"]
    if stop("continued"):
      return manifest.data
  if "rft" in baselines and rounds_run:
    def rft() -> dict[str, Any]:
      state = reflect_lib.run_reflect(
          output_dir=_join(run_dir, "rft"), objective="rft",
          rft_settings=rft_settings or reflect_lib.RftSettings(
              input_length=input_length, target_length=target_length,
              interleave_interval=interleave_interval),
          train_budgets=baselines_lib.round_train_flops(reflect_state),
          reuse_samples={1: _join(run_dir, "reflect", "round_1", "samples")},
          **reflect_kwargs)
      return baselines_lib.reflect_outputs(state)
    students["tinythinker_rft"] = _stage(manifest, "rft", rft, log)["best"]["model_dir"]
    if stop("rft"):
      return manifest.data

  # ---- phase 1 of the other formats (at TinyThinker's whole budget with match_budget)
  for fmt in [f for f in student_formats if not registry.get(f).staged]:
    def train_other(fmt=fmt) -> dict[str, Any]:
      settings = train_settings
      if match_budget:
        budget = baselines_lib.tinythinker_flops(
            students["tinythinker"], reflect_state, budget_includes_sampling)
        settings = baselines_lib.budget_settings(train_settings, budget, early_stop=True)
      return train_student(fmt, settings, students[fmt], initial_checkpoint_path)
    _stage(manifest, f"train_{fmt}", train_other, log)
    if stop(f"train_{fmt}"):
      return manifest.data

  # ---- evaluation of every student on the test split
  def evaluate() -> dict[str, Any]:
    test_sets = [("test", dataset, max_test_examples)] + [
        (e[0], e[1], e[2] if len(e) == 3 else max_test_examples) for e in extra_test_sets]
    loaded = {name: datasets.load_split(name_dataset, dataset_path, "test", split_seed,
                                        cap)
              for name, name_dataset, cap in test_sets}
    reports = {}
    spent = baselines_lib.student_compute(run_dir, manifest.data, students)
    for name, model_dir in students.items():
      fmt = baselines_lib.format_of(name)
      log(f"  evaluating {name}")
      policy = student_lib.build(model_dir, settings=student)
      for set_name, set_dataset, _ in test_sets:
        examples, answer_type = loaded[set_name]
        out = (_join(run_dir, "evaluate", name) if set_name == "test" else
               _join(run_dir, "evaluate", name, set_name))
        report_ = eval_lib.evaluate(
            policy, examples, fmt=Format(fmt), answer_type=answer_type, output_dir=out,
            num_runs=eval_num_runs, temperature=eval_temperature, seed=split_seed,
            progress=progress, describe={"model": model_dir, "dataset": set_dataset,
                                         "split": "test", "compute": spent[name]})
        if set_name == "test":
          reports[name] = report_
        else:
          reports[name].setdefault("extra_test_sets", {})[set_name] = {
              "dataset": set_dataset, "greedy": report_["greedy"],
              **({"self_consistency": report_["self_consistency"]}
                 if "self_consistency" in report_ else {})}
    return {"reports": reports}
  _stage(manifest, "evaluate", evaluate, log)
  if stop("evaluate"):
    return manifest.data

  # ---- export
  final = students.get("tinythinker_reflected") or students.get("tinythinker") or \
      students[student_formats[-1]]
  if export:
    def export_stage() -> dict[str, Any]:
      path = export_lib.export_student(final, _join(run_dir, "export", "hf_model"),
                                       vocabulary=vocab_path)
      return {"hf_model": path, "from": final}
    _stage(manifest, "export", export_stage, log)
    if stop("export"):
      return manifest.data

  # ---- report
  if report:
    def report_stage() -> dict[str, Any]:
      from tinythinker_jax import reports  # pylint: disable=import-outside-toplevel
      return reports.write_report(run_dir, manifest.data, students)
    _stage(manifest, "report", report_stage, log)
  return manifest.data
