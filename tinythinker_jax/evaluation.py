"""Inference, evaluation and scoring of a student: what `infer`, `evaluate`, `score` run.

- `run_infer` writes one record per example (each chain's recall, analyses,
  summary or output, parsed answer, per-stage log-probabilities, and the
  voted answer) as JSONL;
- `run_evaluate` runs greedy chains and N test-time-sampled chains and writes
  `report.json` and `report.md`: greedy and self-consistency accuracy,
  format-error rates and the per-option confusion of the greedy answers;
- `run_score` gives the log-likelihood of given targets.

Work is cut into shards (`tinythinker_jax.shards`): several processes share
it, and a killed run resumes without redoing finished shards.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Optional, Sequence

import jax

from tinythinker_jax import partitioning, shards
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType, Example
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import chains
from tinythinker_jax.reasoning.formats import Format


@dataclasses.dataclass(frozen=True)
class StudentSettings:
  """How a student is placed and batched for generation."""

  batch_size: int = 64  # rows per decode call (inputs x samples)
  max_input_length: int = 256
  max_decode_length: int = 128
  data_parallelism: int = -1  # over this process's devices
  model_parallelism: int = 1


def build_student(model_dir: str, *, vocabulary: str = "",
                  model_config: Optional[t5.T5Config] = None,
                  settings: StudentSettings = StudentSettings()):
  """A `Student` on this process's devices (sampling is sharded by process)."""
  from tinythinker_jax import student  # pylint: disable=import-outside-toplevel
  mesh = partitioning.create_mesh(settings.data_parallelism, settings.model_parallelism,
                                  devices=jax.local_devices())
  return student.Student.from_path(
      model_dir, model_config=model_config, vocabulary=vocabulary,
      partitioner=partitioning.Partitioner(mesh), batch_size=settings.batch_size,
      max_input_length=settings.max_input_length,
      max_decode_length=settings.max_decode_length)


def load_examples(dataset: str, dataset_path: str = "", split: str = "test",
                  seed: int = 0, max_examples: Optional[int] = None
                  ) -> tuple[list[Example], AnswerType]:
  spec = datasets.get_spec(dataset)
  splits = datasets.load_dataset(dataset, dataset_path, seed)
  if split not in splits:
    raise ValueError(f"split={split!r}; {dataset} has {list(splits)}")
  examples = splits[split][:max_examples] if max_examples else splits[split]
  if not examples:
    raise ValueError(f"{dataset} {split}: no examples")
  return list(examples), spec.answer_type


def infer_records(examples: Sequence[Example], generate: chains.GenerateFn, *,
                  fmt: Format, answer_type: AnswerType, sampled: bool = False,
                  num_runs: int = 1, temperature: float = 0.7, seed: int = 0
                  ) -> list[dict[str, Any]]:
  """One record per example: every chain, the voted answer, and correctness."""
  results = chains.run_chains(examples, generate, fmt=fmt, answer_type=answer_type,
                              sampled=sampled, num_runs=num_runs,
                              temperature=temperature, seed=seed)
  records = []
  for example, runs in zip(examples, results):
    answer = chains.majority_vote(runs)
    records.append({
        "id": example.id, "gold": chains.gold_answer(example, fmt),
        "labels": list(example.labels), "answer": answer,
        "correct": chains.is_correct(answer, example, fmt, answer_type),
        "format_errors": sum(r.error is not None for r in runs),
        "runs": [r.to_json() for r in runs]})
  return records


def infer(student, examples: Sequence[Example], *, fmt: Format, answer_type: AnswerType,
          output_dir: str, name: str = "predictions", sampled: bool = False,
          num_runs: int = 1, temperature: float = 0.7, seed: int = 0,
          shard_size: int = 256, progress: bool = True) -> list[dict[str, Any]]:
  """`infer_records` over shards of examples, resumable, shared by processes."""
  def work(items, index):
    return infer_records(items, student.generate, fmt=fmt, answer_type=answer_type,
                         sampled=sampled, num_runs=num_runs, temperature=temperature,
                         seed=seed * 100_003 + index)
  settings = {"format": fmt.value, "sampled": sampled, "num_runs": num_runs,
              "temperature": temperature, "seed": seed,
              "examples": [e.id for e in examples[:3]]}
  return shards.run_sharded(examples, work, directory=os.path.join(output_dir, name),
                            name=name, shard_size=shard_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), settings=settings,
                            progress=progress,
                            barrier=lambda: shards.sync_processes(f"infer_{name}"))


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  n = max(len(records), 1)
  runs = sum(len(r["runs"]) for r in records)
  return {"accuracy": sum(r["correct"] for r in records) / n,
          "format_error_rate": sum(r["format_errors"] for r in records) / max(runs, 1),
          "no_answer_rate": sum(r["answer"] is None for r in records) / n,
          "num_examples": len(records), "runs_per_example": runs / n}


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
  if report.get("chance") is not None:
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
             progress: bool = True, describe: Optional[dict[str, Any]] = None
             ) -> dict[str, Any]:
  """Greedy and self-consistency accuracy; writes report.json and report.md."""
  greedy = infer(student, examples, fmt=fmt, answer_type=answer_type,
                 output_dir=output_dir, name="greedy", seed=seed, shard_size=shard_size,
                 progress=progress)
  report = dict(describe or {}, format=fmt.value, greedy=summarize_records(greedy),
                confusion=confusion(greedy) if examples[0].choices else None)
  if examples[0].choices:
    report["chance"] = sum(1 / len(e.choices) for e in examples) / len(examples)
  if num_runs > 0:
    sampled = infer(student, examples, fmt=fmt, answer_type=answer_type,
                    output_dir=output_dir, name="self_consistency", sampled=True,
                    num_runs=num_runs, temperature=temperature, seed=seed,
                    shard_size=shard_size, progress=progress)
    report["self_consistency"] = dict(summarize_records(sampled), num_runs=num_runs,
                                      temperature=temperature)
  report["sample_chains"] = [
      {"id": r["id"], "gold": r["gold"], "answer": r["answer"],
       "chain": _chain_text(r["runs"][0])} for r in greedy[:3]]
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    shards.write_json_atomically(os.path.join(output_dir, "report.json"), report)
    shards.write_text_atomically(os.path.join(output_dir, "report.md"),
                                 markdown_report(report))
  return report


# ------------------------------------------------------------ gin entry points


def _describe(model_dir: str, dataset: str, split: str) -> dict[str, Any]:
  return {"model": model_dir, "dataset": dataset, "split": split}


def run_infer(*, model_dir: str, dataset: str, output_dir: str, format: str,  # noqa: A002
              dataset_path: str = "", split: str = "test", sampled: bool = False,
              num_runs: int = 1, temperature: float = 0.7,
              max_examples: Optional[int] = None, split_seed: int = 0, seed: int = 0,
              vocabulary: str = "", model_config: Optional[t5.T5Config] = None,
              student: StudentSettings = StudentSettings(), shard_size: int = 256,
              progress: bool = True) -> str:
  """Writes `<output_dir>/predictions.jsonl`; returns its path."""
  examples, answer_type = load_examples(dataset, dataset_path, split, split_seed,
                                        max_examples)
  model = build_student(model_dir, vocabulary=vocabulary, model_config=model_config,
                        settings=student)
  records = infer(model, examples, fmt=Format(format), answer_type=answer_type,
                  output_dir=output_dir, sampled=sampled, num_runs=num_runs,
                  temperature=temperature, seed=seed, shard_size=shard_size,
                  progress=progress)
  path = os.path.join(output_dir, "predictions.jsonl")
  if jax.process_index() == 0:
    shards.write_jsonl_atomically(path, records)
  return path


def run_evaluate(*, model_dir: str, dataset: str, output_dir: str,
                 format: str,  # noqa: A002
                 dataset_path: str = "", split: str = "test", num_runs: int = 5,
                 temperature: float = 0.7, max_examples: Optional[int] = None,
                 split_seed: int = 0, seed: int = 0, vocabulary: str = "",
                 model_config: Optional[t5.T5Config] = None,
                 student: StudentSettings = StudentSettings(), shard_size: int = 256,
                 progress: bool = True) -> dict[str, Any]:
  examples, answer_type = load_examples(dataset, dataset_path, split, split_seed,
                                        max_examples)
  model = build_student(model_dir, vocabulary=vocabulary, model_config=model_config,
                        settings=student)
  return evaluate(model, examples, fmt=Format(format), answer_type=answer_type,
                  output_dir=output_dir, num_runs=num_runs, temperature=temperature,
                  seed=seed, shard_size=shard_size, progress=progress,
                  describe=_describe(model_dir, dataset, split))


def run_score(*, model_dir: str, inputs: Sequence[str], targets: Sequence[str],
              vocabulary: str = "", model_config: Optional[t5.T5Config] = None,
              student: StudentSettings = StudentSettings()) -> list[dict[str, Any]]:
  model = build_student(model_dir, vocabulary=vocabulary, model_config=model_config,
                        settings=student)
  return model.score(inputs, targets)
