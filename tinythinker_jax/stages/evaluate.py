"""`tinythinker evaluate`: greedy and self-consistency accuracy of a student.

`run_evaluate` runs greedy chains and N test-time-sampled chains and writes
`report.json` and `report.md`: greedy and self-consistency accuracy,
format-error rates and the per-option confusion of the greedy answers. Given
teacher rationales of held-out questions (`teacher_records`), a staged
student's report adds its stage diagnosis (`reasoning.diagnosis`: accuracy
from its own chain, from the teacher's recall, from the teacher's recall and
analyses, and how often its stages write the teacher's text).
"""

from __future__ import annotations

import collections
from typing import Any, Optional, Sequence

import jax

from tinythinker_jax import paths, significance
from tinythinker_jax.stages import baselines
from tinythinker_jax.stages import infer as infer_lib
from tinythinker_jax import student as student_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType, Example, RationaleRecord, read_records
from tinythinker_jax.reasoning import diagnosis as diagnosis_lib
from tinythinker_jax.reasoning import formats, ranking
from tinythinker_jax.reasoning.formats import Format


def confusion(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Gold option -> predicted option counts ('none': no parsable answer)."""
  labels = sorted({str(l) for r in records for l in r["labels"]} |
                  {str(r["gold"]) for r in records if r["gold"] is not None})
  matrix: dict[str, collections.Counter] = {g: collections.Counter() for g in labels}
  for r in records:
    if r["gold"] is None:
      continue
    matrix.setdefault(str(r["gold"]), collections.Counter())[
        "none" if r["answer"] is None else str(r["answer"])] += 1
  return {"labels": labels, "matrix": {g: dict(c) for g, c in matrix.items()}}


def markdown_report(report: dict[str, Any]) -> str:
  g, sc = report["greedy"], report.get("self_consistency")
  lines = [f"# Evaluation: {report['dataset']} {report['split']} "
           f"({report['format']})", "",
           f"Model: `{report['model']}`  ", f"Examples: {g['num_examples']}", "",
           "| decoding | accuracy | format errors | no answer |", "|---|---|---|---|",
           f"| greedy | {g['accuracy']:.1%} | {g['format_error_rate']:.1%} | "
           f"{g['no_answer_rate']:.1%} |"]
  if sc:
    lines.append(f"| self-consistency ({sc['num_runs']} runs, T={sc['temperature']}) | "
                 f"{sc['accuracy']:.1%} | {sc['format_error_rate']:.1%} | "
                 f"{sc['no_answer_rate']:.1%} |")
  rank = report.get("rank")
  if rank:
    lines.append(f"| rank classification (options' log-likelihood) | {rank['accuracy']:.1%} "
                 f"(per token: {rank['accuracy_per_token']:.1%}) | – | – |")
  majority = report.get("majority_answer")
  if majority:
    lines += ["", f"Majority answer (always {majority['answer']!r}): "
              f"{majority['accuracy']:.1%}"]
  elif report.get("chance") is not None:
    lines += ["", f"Chance: {report['chance']:.1%}"]
  conf = report.get("confusion")
  if conf and conf["labels"]:
    predicted = conf["labels"] + ["none"]
    lines += ["", "Greedy answers (rows: gold, columns: predicted):", "",
              "| gold | " + " | ".join(predicted) + " |",
              "|---|" + "---|" * len(predicted)]
    for gold in conf["labels"]:
      row = conf["matrix"].get(gold, {})
      lines.append(f"| {gold} | " + " | ".join(str(row.get(p, 0)) for p in predicted) +
                   " |")
  if report.get("stage_diagnosis"):
    lines += [""] + diagnosis_lib.markdown_lines(report["stage_diagnosis"])
  examples = report.get("sample_chains") or []
  if examples:
    lines += ["", "Sample greedy chains:", ""]
    for ex in examples:
      lines.append(f"- `{ex['id']}` gold {ex['gold']}, predicted {ex['answer']}: "
                   f"{ex['chain']}")
  return "\n".join(lines) + "\n"


def _chain_text(run: dict[str, Any]) -> str:
  parts = []
  if run.get("recall"):
    parts.append(f"Recall: {run['recall']}")
  if run.get("analyses"):
    parts.append("Analyze: " + " ".join(f"For option {k}, {v}"
                                        for k, v in run["analyses"].items()))
  parts.append(run["output"])
  return " / ".join(p.replace("\n", " ") for p in parts)


def evaluate(student, examples: Sequence[Example], *, fmt: Format,
             answer_type: AnswerType, output_dir: str, num_runs: int = 5,
             temperature: float = 0.7, seed: int = 0, shard_size: int = 256,
             progress: bool = True, describe: Optional[dict[str, Any]] = None,
             teacher_records: Optional[Sequence[RationaleRecord]] = None,
             teacher_records_path: str = "",
             rank: Optional[ranking.RankSettings] = None) -> dict[str, Any]:
  """Greedy and self-consistency accuracy (and, for a staged format with
  `teacher_records`, the stage diagnosis; with `rank` and options, rank
  classification: the option whose text the student finds most likely);
  writes report.json and report.md."""
  greedy = infer_lib.infer(student, examples, fmt=fmt, answer_type=answer_type,
                 output_dir=output_dir, name="greedy", seed=seed, shard_size=shard_size,
                 progress=progress)
  report = dict(describe or {}, format=fmt.value, greedy=infer_lib.summarize_records(greedy),
                confusion=confusion(greedy) if examples[0].choices else None)
  if examples[0].choices:
    report["chance"] = sum(1 / len(e.choices) for e in examples) / len(examples)
  answer, accuracy = significance.majority_baseline([str(e.answer) for e in examples])
  report["majority_answer"] = {"answer": answer, "accuracy": accuracy}
  if rank is not None and examples[0].choices:
    ranked = infer_lib.rank(student, examples, output_dir=output_dir, settings=rank,
                            shard_size=shard_size, progress=progress)
    report["rank"] = ranking.summarize(ranked, rank)
  if num_runs > 0:
    sampled = infer_lib.infer(student, examples, fmt=fmt, answer_type=answer_type,
                    output_dir=output_dir, name="self_consistency", sampled=True,
                    num_runs=num_runs, temperature=temperature, seed=seed,
                    shard_size=shard_size, progress=progress)
    report["self_consistency"] = dict(infer_lib.summarize_records(sampled), num_runs=num_runs,
                                      temperature=temperature)
  if teacher_records and fmt in formats.STAGES_OF:
    try:  # An optional reading: records it cannot use do not fail the evaluation.
      diagnosis = diagnosis_lib.stage_diagnosis(teacher_records, student.generate,
                                                fmt=fmt, seed=seed)
    except ValueError as e:
      diagnosis = {"error": str(e)}
    report["stage_diagnosis"] = dict(diagnosis, records=teacher_records_path)
  report["sample_chains"] = [
      {"id": r["id"], "gold": r["gold"], "answer": r["answer"],
       "chain": _chain_text(r["runs"][0])} for r in greedy[:3]]
  if jax.process_index() == 0:
    output_dir = paths.as_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths.write_json(output_dir / "report.json", report)
    paths.write_text(output_dir / "report.md", markdown_report(report))
  return report


# ------------------------------------------------------------ gin entry point


def evaluate_students(students: dict[str, str], test_sets: Sequence[tuple[str, str, Optional[int]]],
                      *, output_dir: str, dataset_path: str, split_seed: int,
                      student: student_lib.StudentSettings, num_runs: int,
                      temperature: float, compute: dict[str, Any], progress: bool = True,
                      log=print, teacher_records: str = "",
                      rank: Optional[ranking.RankSettings] = ranking.RankSettings(),
                      settings_of: Optional[dict[str, student_lib.StudentSettings]] = None
                      ) -> dict[str, dict[str, Any]]:
  """Evaluates each student (name -> model dir) on `test_sets`, `(name, dataset,
  max_examples)` with 'test' first; the others land in each report's
  `extra_test_sets`. Reports go to `output_dir/<student>[/<set name>]`, each
  with the student's `compute[name]`. `teacher_records` (a `records.jsonl` of
  TinyThinker rationales for held-out questions) adds the staged students'
  stage diagnosis to their test report. `settings_of[name]` replaces `student`
  for one student (the untrained model's chat template)."""
  loaded = {name: datasets.load_split(name_dataset, dataset_path, "test", split_seed, cap)
            for name, name_dataset, cap in test_sets}
  records = read_records(teacher_records, RationaleRecord) if teacher_records else None
  reports: dict[str, dict[str, Any]] = {}
  for name, model_dir in students.items():
    log(f"  evaluating {name}")
    policy = student_lib.build(model_dir, settings=(settings_of or {}).get(name, student))
    for set_name, set_dataset, _ in test_sets:
      examples, answer_type = loaded[set_name]
      out = paths.as_path(output_dir) / name
      report = evaluate(
          policy, examples, fmt=Format(baselines.format_of(name)), answer_type=answer_type,
          output_dir=str(out if set_name == "test" else out / set_name),
          num_runs=num_runs, temperature=temperature, seed=split_seed, progress=progress,
          describe={"model": model_dir, "dataset": set_dataset, "split": "test",
                    "compute": compute[name]},
          teacher_records=records if set_name == "test" else None,
          teacher_records_path=teacher_records, rank=rank)
      if set_name == "test":
        reports[name] = report
      else:
        reports[name].setdefault("extra_test_sets", {})[set_name] = {
            "dataset": set_dataset, "greedy": report["greedy"],
            **({"rank": report["rank"]} if "rank" in report else {}),
            **({"self_consistency": report["self_consistency"]}
               if "self_consistency" in report else {})}
  return reports


def _describe(model_dir: str, dataset: str, split: str) -> dict[str, Any]:
  return {"model": model_dir, "dataset": dataset, "split": split}


def run_evaluate(*, model_dir: str, dataset: str, output_dir: str,
                 format: str,  # noqa: A002
                 dataset_path: str = "", split: str = "test", num_runs: int = 5,
                 temperature: float = 0.7, max_examples: Optional[int] = None,
                 split_seed: int = 0, seed: int = 0, vocabulary: str = "",
                 model_config: Any = None,
                 student: student_lib.StudentSettings = student_lib.StudentSettings(), shard_size: int = 256,
                 progress: bool = True, teacher_records: str = "",
                 rank: Optional[ranking.RankSettings] = ranking.RankSettings()
                 ) -> dict[str, Any]:
  """`evaluate` of one student on a dataset split. `teacher_records`: a
  `records.jsonl` of TinyThinker rationales (`tinythinker teach`) of held-out
  questions, for a staged student's stage diagnosis. `rank` (None: off):
  rank classification of multiple-choice questions beside generation.
  `model_dir` may be an HF folder or a GGUF file: the untrained model."""
  examples, answer_type = datasets.load_split(dataset, dataset_path, split, split_seed,
                                        max_examples)
  model = student_lib.build(model_dir, vocabulary=vocabulary, model_config=model_config,
                        settings=student)
  return evaluate(model, examples, fmt=Format(format), answer_type=answer_type,
                  output_dir=output_dir, num_runs=num_runs, temperature=temperature,
                  seed=seed, shard_size=shard_size, progress=progress,
                  describe=_describe(model_dir, dataset, split),
                  teacher_records=(read_records(teacher_records, RationaleRecord)
                                   if teacher_records else None),
                  teacher_records_path=teacher_records, rank=rank)
