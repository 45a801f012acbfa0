"""Dataset -> distilled students in one run folder (`tinythinker pipeline`, `demo`).

Stages, each in its own subfolder of `run_dir`, in order:

| stage | what | outputs |
|---|---|---|
| `teach` | the teacher's rationales for train and validation (`stages.teach`) | `rationales/<dataset>/<method>/<split>/` |
| `vocab` | a SentencePiece vocabulary on the rendered student texts (unless given) | `vocab/spm.model` |
| `train_<format>` | phase 1 of each TinyThinker format, then (after the baselines) of the other formats (`phase1.run`) | `students/<format>/` |
| `reflect` | TinyThinker's self-reflection rounds (`reflect.run_reflect`) | `reflect/` |
| `continued` | baseline: phase 1 continued to self-reflection's compute (`baselines`) | `students/tinythinker_continued/` |
| `rft` | baseline: rejection-sampling fine-tuning on the same samples, same budget | `rft/` |
| `evaluate` | greedy and self-consistency accuracy of every student on the test split (and `extra_test_sets`), with each student's compute | `evaluate/<student>/report.{json,md}` |
| `export` | the final TinyThinker (or last) student as a Hugging Face folder of its family | `export/hf_model/` |
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
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

from tinythinker_jax import errors, paths, registries
from tinythinker_jax import student as student_lib
from tinythinker_jax.stages import baselines as baselines_lib
from tinythinker_jax.stages import manifest as manifest_lib
from tinythinker_jax.stages import phase1
from tinythinker_jax.stages import phase2
from tinythinker_jax.stages import sample as sample_lib
from tinythinker_jax.stages import evaluate as eval_lib
from tinythinker_jax.stages import export as export_lib
from tinythinker_jax.stages import reflect as reflect_lib
from tinythinker_jax.stages import teach as teach_lib
from tinythinker_jax.stages import validation as validation_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.reasoning import ranking, registry
from tinythinker_jax.training import distillation
from tinythinker_jax.training import recipe as recipe_lib

# The formats a pipeline trains and evaluates.
FORMATS = tuple(registry.FORMATS)


# Phase 1 of the pipeline's students, unless `train_settings` says otherwise: AdamW,
# cosine decay with warm-up (TinyThinker's), 1000 steps.
PHASE1 = recipe_lib.TrainSettings(batch_size=64, train_steps=1000, optimizer="adamw",
                                  schedule="cosine", learning_rate=5e-4, warmup_steps=100)


def _join(directory: paths.PathLike, *parts: str) -> str:
  """A run path as a string (they are recorded in pipeline.json)."""
  return str(paths.as_path(directory).joinpath(*parts))


def _records_dir(run_dir: paths.PathLike) -> str:
  return _join(run_dir, "rationales")


def records_path(run_dir: paths.PathLike, dataset: str, method: str, split: str) -> str:
  """A teacher method's records of a dataset split under the run's rationales."""
  return registry.records_path(_records_dir(run_dir), dataset, method, split)


@dataclasses.dataclass
class _Run:
  """One pipeline run: its arguments, manifest and students (the stages' context)."""
  run_dir: str
  dataset: str
  model_config: Any
  dataset_path: str
  teacher: str
  teacher_config: Any
  gguf: str
  prompts_dir: str
  teach_settings: dict[str, Any]
  student_formats: Sequence[str]
  max_train_examples: Optional[int]
  max_validation_examples: Optional[int]
  max_test_examples: Optional[int]
  max_reflect_examples: Optional[int]
  split_seed: int
  vocabulary: str
  vocab_size: int
  vocab_model_type: str
  train_settings: recipe_lib.TrainSettings
  lengths: dict[str, int]
  interleave_interval: int
  pack: bool
  initial_checkpoint_path: Optional[str]
  reflect_rounds: int
  sample_settings: sample_lib.SampleSettings
  dpo_settings: phase2.DpoSettings
  student: student_lib.StudentSettings
  eval_num_runs: int
  eval_temperature: float
  baselines: Sequence[str]
  match_budget: bool
  budget_includes_sampling: bool
  continued_settings: Optional[recipe_lib.TrainSettings]
  rft_settings: Any
  extra_test_sets: Sequence[tuple]
  num_options: int
  manifest: manifest_lib.Manifest
  log: Callable[[str], None]
  pretrained: str
  chat_template: bool
  rank: Optional[ranking.RankSettings]
  step_by_step_alpha: float
  evaluate_untrained: bool
  distill_teacher: str
  distill_settings: distillation.DistillSettings
  progress: bool
  # model dir of each student (filled as its stage finishes), and the vocabulary
  students: dict[str, str] = dataclasses.field(default_factory=dict)
  vocab_path: str = ""

  @property
  def records_dir(self) -> str:
    return _records_dir(self.run_dir)

  @property
  def rounds_run(self) -> bool:
    return "tinythinker" in self.student_formats and self.reflect_rounds > 0

  @functools.cached_property
  def reflect_state(self) -> Optional[dict[str, Any]]:
    """Self-reflection's final state (read once, by the first stage after it)."""
    if not self.rounds_run:
      return None
    return paths.read_json(paths.as_path(self.run_dir) / "reflect" / "reflect_state.json")

  def reflect_kwargs(self) -> dict[str, Any]:
    return dict(
        initial_model_dir=self.students.get("tinythinker", ""),
        records_path=records_path(self.run_dir, self.dataset, registry.TINYTHINKER, "train"),
        dataset=self.dataset, dataset_path=self.dataset_path,
        max_validation_examples=self.max_validation_examples,
        max_train_examples=self.max_reflect_examples or self.max_train_examples,
        split_seed=self.split_seed, rounds=self.reflect_rounds,
        sample_settings=self.sample_settings, dpo_settings=self.dpo_settings,
        student=self.student, progress=self.progress)


def _teach(run: _Run) -> dict[str, Any]:
  summaries = {}
  methods = sorted({registry.get(f).method for f in run.student_formats})
  for method in methods:
    for split, cap in (("train", run.max_train_examples),
                       ("validation", run.max_validation_examples)):
      out = str(paths.as_path(records_path(run.run_dir, run.dataset, method, split)).parent)
      summary = teach_lib.teach_dataset(
          dataset=run.dataset, output_dir=out, dataset_path=run.dataset_path, split=split,
          method=method, teacher=run.teacher, teacher_config=run.teacher_config,
          gguf=run.gguf, max_examples=cap, seed=run.split_seed,
          prompts_dir=run.prompts_dir, progress=run.progress, **run.teach_settings)
      summaries[f"{method}/{split}"] = dataclasses.asdict(summary)
      if split == "train" and summary.kept == 0:
        raise errors.UserError(f"teach: the teacher kept no {method} rationales for "
                               f"{run.dataset} train ({summary.dropped}); see "
                               f"{out}/dropped.jsonl")
  return {"summaries": summaries, "records_dir": run.records_dir}


def _vocab(run: _Run) -> dict[str, Any]:
  if run.vocabulary:
    return {"vocabulary": run.vocabulary}
  from tinythinker_jax.tokenizers import vocabularies  # pylint: disable=import-outside-toplevel
  texts = []
  for fmt in run.student_formats:
    texts.extend(vocabularies.iter_rendered(
        [records_path(run.run_dir, run.dataset, registry.get(fmt).method, "train")], fmt))
  path = vocabularies.train_sentencepiece(
      texts, run.vocab_size, _join(run.run_dir, "vocab", "spm"),
      model_type=run.vocab_model_type, hard_vocab_limit=False, seed=run.split_seed)
  return {"vocabulary": paths.absolute_str(path)}


def _train_student(run: _Run, fmt: str, settings: recipe_lib.TrainSettings,
                   model_dir: str, initial: Optional[str],
                   teacher: Optional[str] = None) -> dict[str, Any]:
  """Phase 1 of one student format (or its continuation, from `initial`; with
  `teacher`, distilled from its distribution as `run.distill_settings` say)."""
  spec = registry.get(fmt)
  staged = spec.interleaved
  result = phase1.run(
      model_dir=model_dir, model_config=run.model_config,
      mixture_or_task_name=registry.get(fmt).task_name(run.dataset),
      task_feature_lengths=run.lengths, settings=settings,
      records_dir=run.records_dir, vocabulary=run.vocab_path,
      initial_checkpoint_path=initial,
      interleave_interval=run.interleave_interval if staged else None,
      num_options=run.num_options if staged else None, pack=run.pack,
      progress=run.progress, teacher_checkpoint_path=teacher,
      distill=run.distill_settings,
      task_weights=({"predict": run.step_by_step_alpha,
                     "explain": 1.0 - run.step_by_step_alpha} if spec.multitask else None),
      validation=validation_lib.ChainValidation(
          dataset=run.dataset, dataset_path=run.dataset_path, split_seed=run.split_seed,
          max_examples=run.max_validation_examples, format=fmt,
          batch_size=run.student.batch_size))
  return {"model_dir": model_dir, "metrics": result.last_metrics,
          "compute": result.compute.to_json(), "stopped_early": result.stopped_early}


def _reflect(run: _Run) -> dict[str, Any]:
  state = reflect_lib.run_reflect(output_dir=_join(run.run_dir, "reflect"),
                                  **run.reflect_kwargs())
  return baselines_lib.reflect_outputs(state)


def _continued(run: _Run) -> dict[str, Any]:
  """Phase 1 continued from its selected checkpoint for self-reflection's compute."""
  flops = baselines_lib.reflection_flops(run.reflect_state, run.budget_includes_sampling)
  settings = baselines_lib.budget_settings(run.continued_settings or run.train_settings,
                                           flops)
  return dict(_train_student(run, "tinythinker", settings,
                             _join(run.run_dir, "students", "tinythinker_continued"),
                             run.students["tinythinker"]), budget_flops=flops)


def _rft(run: _Run) -> dict[str, Any]:
  """Rejection-sampling fine-tuning: the same rounds (round 1 on the same samples)."""
  state = reflect_lib.run_reflect(
      output_dir=_join(run.run_dir, "rft"), objective="rft",
      rft_settings=run.rft_settings or reflect_lib.RftSettings(
          input_length=run.lengths["inputs"], target_length=run.lengths["targets"],
          interleave_interval=run.interleave_interval),
      train_budgets=baselines_lib.round_train_flops(run.reflect_state),
      reuse_samples={1: _join(run.run_dir, "reflect", "round_1", "samples")},
      **run.reflect_kwargs())
  return baselines_lib.reflect_outputs(state)


def _train_other(run: _Run, fmt: str) -> dict[str, Any]:
  """Phase 1 of a format without stages, capped at TinyThinker's budget with
  `match_budget` (its early stopping still applies)."""
  settings = run.train_settings
  if run.match_budget:
    budget = baselines_lib.tinythinker_flops(
        run.students["tinythinker"], run.reflect_state, run.budget_includes_sampling)
    settings = baselines_lib.budget_settings(run.train_settings, budget, early_stop=True)
  return _train_student(run, fmt, settings, run.students[fmt], run.initial_checkpoint_path)


DISTILLED = baselines_lib.DISTILLED


def distillable(fmt: str) -> bool:
  """Formats a teacher's distribution can teach: one task, no stages."""
  spec = registry.get(fmt)
  return not spec.interleaved and not spec.multitask


def _distill(run: _Run, fmt: str) -> dict[str, Any]:
  """`fmt`'s student again, learning from `distill_teacher`'s distribution, for
  the compute the plain student spent (the teacher's forward passes and any
  on-policy sampling counted against it): the two compare at equal FLOPs."""
  spent = paths.read_json(paths.as_path(run.students[fmt]) / "compute.json")
  settings = baselines_lib.budget_settings(run.train_settings, spent["train_flops"])
  out = _train_student(run, fmt, settings, run.students[fmt + DISTILLED],
                       run.initial_checkpoint_path, teacher=run.distill_teacher)
  return dict(out, budget_flops=spent["train_flops"])


def _diagnosis_records(run: _Run) -> str:
  """The teacher's TinyThinker rationales of the validation questions, for the
  staged students' stage diagnosis ('' without a staged student or records)."""
  staged = [registry.get(f) for f in run.student_formats if registry.get(f).interleaved]
  if not staged:
    return ""
  path = records_path(run.run_dir, run.dataset, staged[0].method, "validation")
  return path if paths.as_path(path).exists() else ""


def _evaluate(run: _Run) -> dict[str, Any]:
  """Every student on the test split (and the extra test sets), with its compute."""
  test_sets = [("test", run.dataset, run.max_test_examples)] + [
      (e[0], e[1], e[2] if len(e) == 3 else run.max_test_examples)
      for e in run.extra_test_sets]
  students = dict(run.students)
  settings_of = {}
  if run.pretrained and run.evaluate_untrained:  # The model before any training.
    students = {baselines_lib.UNTRAINED: run.pretrained, **students}
    settings_of[baselines_lib.UNTRAINED] = dataclasses.replace(
        run.student, chat_template=run.chat_template)
  reports = eval_lib.evaluate_students(
      students, test_sets, output_dir=_join(run.run_dir, "evaluate"),
      dataset_path=run.dataset_path, split_seed=run.split_seed,
      student=run.student, num_runs=run.eval_num_runs,
      temperature=run.eval_temperature, progress=run.progress, log=run.log,
      compute=baselines_lib.student_compute(run.run_dir, run.manifest.data, students),
      teacher_records=_diagnosis_records(run), rank=run.rank, settings_of=settings_of)
  return {"reports": reports}


def _final_student(run: _Run) -> str:
  return (run.students.get("tinythinker_reflected") or run.students.get("tinythinker")
          or run.students[run.student_formats[-1]])


def _export(run: _Run) -> dict[str, Any]:
  final = _final_student(run)
  path = export_lib.export_student(final, _join(run.run_dir, "export", "hf_model"),
                                   vocabulary=run.vocab_path)
  return {"hf_model": path, "from": final}


def _report(run: _Run) -> dict[str, Any]:
  from tinythinker_jax import reports  # pylint: disable=import-outside-toplevel
  return reports.write_report(run.run_dir, run.manifest.data, run.students)


def _stages(run: _Run, export: bool, report: bool
            ) -> Iterator[tuple[str, Callable[[], dict[str, Any]],
                                Callable[[dict[str, Any]], None]]]:
  """The stages in order, as (name, run it, record its outputs in `run`).

  TinyThinker's formats train first, so that the other formats can be given
  its budget (`match_budget`); the baselines follow self-reflection, whose
  compute they are given.
  """
  def keep(key: str, best: bool = False) -> Callable[[dict[str, Any]], None]:
    def record(out: dict[str, Any]) -> None:
      run.students[key] = out["best"]["model_dir"] if best else out["model_dir"]
    return record
  yield "teach", lambda: _teach(run), lambda out: None
  yield "vocab", lambda: _vocab(run), lambda out: setattr(run, "vocab_path",
                                                          out["vocabulary"])
  for fmt in [f for f in run.student_formats if registry.get(f).interleaved]:
    yield (f"train_{fmt}",
           functools.partial(_train_student, run, fmt, run.train_settings,
                             run.students[fmt], run.initial_checkpoint_path),
           lambda out: None)
  if run.rounds_run:
    yield "reflect", lambda: _reflect(run), keep("tinythinker_reflected", best=True)
    if "continued" in run.baselines:
      yield "continued", lambda: _continued(run), keep("tinythinker_continued")
    if "rft" in run.baselines:
      yield "rft", lambda: _rft(run), keep("tinythinker_rft", best=True)
  for fmt in [f for f in run.student_formats if not registry.get(f).interleaved]:
    yield f"train_{fmt}", functools.partial(_train_other, run, fmt), lambda out: None
  if run.distill_teacher:
    for fmt in [f for f in run.student_formats if distillable(f)]:
      yield f"distill_{fmt}", functools.partial(_distill, run, fmt), lambda out: None
  yield "evaluate", lambda: _evaluate(run), lambda out: None
  if export:
    yield "export", lambda: _export(run), lambda out: None
  if report:
    yield "report", lambda: _report(run), lambda out: None


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
                 initial_checkpoint_path: Optional[str] = None, pretrained: str = "",
                 chat_template: bool = False, reflect_rounds: int = 0,
                 sample_settings: sample_lib.SampleSettings = sample_lib.SampleSettings(),
                 dpo_settings: phase2.DpoSettings = phase2.DpoSettings(),
                 student: student_lib.StudentSettings = student_lib.StudentSettings(),
                 eval_num_runs: int = 5, eval_temperature: float = 0.7,
                 rule_based_settings=None, recorded_settings=None,
                 local_servers: int = 1, local_threads: Optional[int] = None,
                 local_fresh_prompts: bool = True, baselines: Sequence[str] = (),
                 match_budget: bool = False, budget_includes_sampling: bool = True,
                 continued_settings: Optional[recipe_lib.TrainSettings] = None,
                 rft_settings=None,
                 extra_test_sets: Sequence[tuple] = (),
                 rank: Optional[ranking.RankSettings] = ranking.RankSettings(),
                 step_by_step_alpha: float = 0.5, evaluate_untrained: bool = True,
                 distill_teacher: str = "",
                 distill_settings: distillation.DistillSettings = (
                     distillation.DistillSettings()),
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
  `pretrained` (an HF folder or a GGUF file of a decoder-only model, gin's
  PRETRAINED) starts every student from its weights with its own tokenizer as
  the vocabulary (unless `initial_checkpoint_path` / `vocabulary` say otherwise);
  `chat_template` wraps every decoder-only prompt in that tokenizer's chat
  template (an instruct student), as token ids on the model config. With
  `pretrained`, the model itself is evaluated too, zero-shot (`untrained`: the
  vanilla prompt, and ranked), unless `evaluate_untrained` is off (its greedy
  answers do not depend on the seed: one seed's evaluation serves them all).
  `local_servers`, `local_threads` and `local_fresh_prompts` are the local
  teacher's (`TEACHER='local'`; `stages.teach.teach_dataset`).
  `rank` (None: off) adds rank classification of multiple-choice questions
  (`reasoning.ranking`) to every student's report. `step_by_step_alpha`:
  Distilling Step-by-Step's label-loss weight (the rationale's is 1 - alpha).
  `distill_teacher` (gin's DISTILL_TEACHER: a model dir, HF folder or GGUF
  whose tokenizer is the run's vocabulary) adds `<format>_distilled` for every
  format without stages (vanilla, Fine-tune-CoT): the same student learning
  from the teacher's distribution as `distill_settings` say (offline logit or
  on-policy distillation, `training.distillation`), for the FLOPs its plain
  counterpart spent, the teacher's forward passes included.
  `extra_test_sets` are `(name, dataset[, max_examples])` whose test splits
  are evaluated too (e.g. out-of-distribution variants), read from
  `dataset_path`; `max_examples` defaults to `max_test_examples`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if pretrained:
    if not paths.as_path(pretrained).exists():
      raise errors.MissingFileError(f"PRETRAINED={pretrained!r}: no such HF folder or GGUF "
                                    "file")
    initial_checkpoint_path = initial_checkpoint_path or paths.absolute_str(pretrained)
    vocabulary = vocabulary or paths.absolute_str(pretrained)
  if chat_template:
    model_config = student_lib.with_chat_template(model_config, vocabulary)
  if jax.process_count() > 1:
    raise errors.UserError("`pipeline` runs on one host (its teach stage calls the teacher "
                     "once); on several hosts run `teach` on one, then `train`, `sample`, "
                     "`reflect` and `evaluate` on all")
  for fmt in student_formats:
    registry.get(fmt, "STUDENT_FORMATS")  # an unknown name lists the known ones
  if not 0.0 <= step_by_step_alpha <= 1.0:
    raise errors.UserError(f"STEP_BY_STEP_ALPHA={step_by_step_alpha}: a weight in [0, 1]")
  for name in baselines:
    try:
      baselines_lib.BASELINES[name]
    except registries.UnknownName as e:
      raise errors.UserError(f"run_pipeline.baselines: {e}") from None
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
  if teacher == "recorded" and recorded_settings is not None:
    settings["recorded"] = dataclasses.asdict(recorded_settings)
  if distill_teacher:
    if not any(distillable(f) for f in student_formats):
      raise errors.UserError(f"DISTILL_TEACHER: none of STUDENT_FORMATS={student_formats} "
                             "can be distilled (vanilla and Fine-tune-CoT formats can)")
    if not vocabulary:
      raise errors.UserError(
          "DISTILL_TEACHER needs the teacher's tokenizer as the run's vocabulary: set "
          "VOCABULARY (or PRETRAINED); a SentencePiece model trained for this run "
          "cannot match a teacher trained before it")
    # Before any stage runs: a mismatch found after hours of training helps no one.
    phase1.check_teacher_tokenizer(distill_teacher, vocabulary,
                                   "DISTILL_TEACHER")
    phase1.check_distill_data(distill_settings, pack)
    settings["distill"] = {"teacher": paths.absolute_str(distill_teacher),
                           **dataclasses.asdict(distill_settings)}
  if teacher == "rule_based" and rule_based_settings is not None and (
      not rule_based_settings.exact or rule_based_settings.num_samples > 1):
    settings["rule_based"] = dataclasses.asdict(rule_based_settings)
  run = _Run(
      run_dir=run_dir, dataset=dataset, model_config=model_config,
      dataset_path=dataset_path, teacher=teacher, teacher_config=teacher_config,
      gguf=gguf, prompts_dir=prompts_dir,
      teach_settings=dict(
          {k: v for k, v in (("finetune_cot", finetune_cot_settings),
                             ("tinythinker", tinythinker_settings),
                             ("rule_based", rule_based_settings),
                             ("recorded", recorded_settings)) if v},
          local_servers=local_servers, local_threads=local_threads,
          local_fresh_prompts=local_fresh_prompts),
      student_formats=student_formats, max_train_examples=max_train_examples,
      max_validation_examples=max_validation_examples,
      max_test_examples=max_test_examples, max_reflect_examples=max_reflect_examples,
      split_seed=split_seed, vocabulary=vocabulary, vocab_size=vocab_size,
      vocab_model_type=vocab_model_type, train_settings=train_settings,
      lengths={"inputs": input_length, "targets": target_length},
      interleave_interval=interleave_interval, pack=pack,
      initial_checkpoint_path=initial_checkpoint_path, reflect_rounds=reflect_rounds,
      sample_settings=sample_settings, dpo_settings=dpo_settings, student=student,
      eval_num_runs=eval_num_runs, eval_temperature=eval_temperature,
      baselines=baselines, match_budget=match_budget,
      budget_includes_sampling=budget_includes_sampling,
      continued_settings=continued_settings, rft_settings=rft_settings,
      extra_test_sets=extra_test_sets, num_options=spec.num_options or 1,
      manifest=manifest_lib.Manifest(run_dir, settings), log=print if progress else (lambda _: None),
      progress=progress, pretrained=pretrained, chat_template=chat_template, rank=rank,
      step_by_step_alpha=step_by_step_alpha, evaluate_untrained=evaluate_untrained,
      distill_teacher=paths.absolute_str(distill_teacher) if distill_teacher else "",
      distill_settings=distill_settings,
      students={**{fmt: _join(run_dir, "students", fmt) for fmt in student_formats},
                **{fmt + DISTILLED: _join(run_dir, "students", fmt + DISTILLED)
                   for fmt in student_formats if distill_teacher and distillable(fmt)}})
  for name, stage_fn, record in _stages(run, export, report):
    record(manifest_lib.run_stage(run.manifest, name, stage_fn, run.log))
    if stop_after_stage == name:
      break
  return run.manifest.data
