"""`tinythinker sample`: self-reflection data from the student's own chains.

With the current policy, sample each training question's recall
`num_recall_samples` times (T=0.7; the rest of the chain greedy) and build
recall pairs; after each distinct chosen recall of those pairs (a pair row)
sample `num_analyze_samples` chains (every option's analysis at T=0.7, the
summary greedy) and build analyze pairs (`reasoning.preferences`); score
every chosen and rejected sequence with the policy, which is the reference
of the next DPO round. Sharded by process and resumable by shard.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Optional, Sequence

import jax

from tinythinker_jax import errors, paths, seeds, shards
from tinythinker_jax import student as student_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.data import schema
from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import chains, preferences


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """TinyThinker's self-reflection sampling recipe (docs/methods.md)."""

  num_recall_samples: int = 10
  temperature: float = 0.7
  top_k: int = 0
  top_p: float = 1.0
  # Pair rows (distinct chosen recalls of a question's recall pairs) whose
  # chains are sampled; None: all, as TinyThinker's script.
  max_chosen_recalls: Optional[int] = None
  num_analyze_samples: int = 10  # chains sampled per pair row
  max_recall_pairs: Optional[int] = None  # per question
  max_analyze_pairs: Optional[int] = None  # per pair row
  shard_size: int = 64  # questions per resumable shard
  seed: int = 0


# ------------------------------------------------------------------ teacher


@dataclasses.dataclass
class TeacherFields:
  recalls: list[str] = dataclasses.field(default_factory=list)
  analyses: list[dict[str, str]] = dataclasses.field(default_factory=list)


def read_teacher_records(path: paths.PathLike
                         ) -> tuple[list[Example], dict[str, TeacherFields]]:
  """TinyThinker teacher records: the questions (in order) and their fields by id."""
  if not paths.as_path(path).exists():
    raise errors.MissingFileError(f"{path}: no teacher records (run `tinythinker teach` with "
                            "METHOD='tinythinker')")
  examples, fields = [], {}
  for index, record in enumerate(schema.read_records(path, schema.RationaleRecord)):
    if record.method != schema.TINYTHINKER:
      raise errors.DataError(f"{path}: record {index + 1} is a {record.method} record, "
                             "not TinyThinker's")
    if record.id not in fields:
      examples.append(record.example)
      fields[record.id] = TeacherFields()
    fields[record.id].recalls.append(record.recall)
    fields[record.id].analyses.append(dict(record.analyses))
  return examples, fields


# ----------------------------------------------------------------- sampling


def _chain(run: chains.ChainRun, sampled: str) -> dict[str, Any]:
  """A sampled chain as stored with its question (rejection-sampling data):
  `sampled` says which stage was sampled ('recall': the recall, then the
  rest greedy; 'analyze': the analyses after a chosen recall)."""
  return schema.SampledChain(sampled, run.recall, run.analyses, run.answer).to_json()


def sample_questions(student, examples: Sequence[Example],
                     teacher: Mapping[str, TeacherFields], settings: SampleSettings,
                     seed: int) -> list[dict[str, Any]]:
  """One record per question: its sampled answers and its preference pairs."""
  stage = chains.Sampling(settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
  runs = chains.run_staged(examples, student.generate, recall=stage, num_runs=
                           settings.num_recall_samples, seed=seed)
  rng = seeds.rng(seed, "pair_choices")
  out: list[dict[str, Any]] = []
  analyze_jobs: list[tuple[int, preferences.PairRow]] = []
  for i, (example, example_runs) in enumerate(zip(examples, runs)):
    fields = teacher.get(example.id, TeacherFields())
    pairs = preferences.recall_pairs(example, example_runs, fields.recalls, rng,
                                    settings.max_recall_pairs)
    out.append({"id": example.id, "gold": example.gold_label,
                "recall_answers": [r.answer for r in example_runs],
                "pairs": list(pairs),
                "chains": [_chain(r, "recall") for r in example_runs]})
    for row in preferences.pair_rows(example, example_runs, pairs, fields.recalls,
                                     fields.analyses, settings.max_chosen_recalls):
      analyze_jobs.append((i, row))
  if analyze_jobs and settings.num_analyze_samples > 0:
    analyzed = chains.run_staged(
        [examples[i] for i, _ in analyze_jobs], student.generate, analyze=stage,
        recalls=[[row.recall] * settings.num_analyze_samples for _, row in analyze_jobs],
        seed=seeds.derive(seed, "analyze_samples"))
    for (i, row), job_runs in zip(analyze_jobs, analyzed):
      pairs = preferences.analyze_pairs(examples[i], row, job_runs, rng,
                                        settings.max_analyze_pairs)
      out[i]["pairs"].extend(pairs)
      out[i]["chains"].extend(_chain(r, "analyze") for r in job_runs)
  flat = [p for record in out for p in record["pairs"]]
  scores = []
  if flat:
    prompts = [p.prompt for p in flat]
    scores = student.score(prompts + prompts, [p.chosen for p in flat] +
                           [p.rejected for p in flat])
  scored = iter(zip(scores[:len(flat)], scores[len(flat):]))
  for record in out:  # each pair with the sampling policy's (the reference's) scores
    record["pairs"] = [dataclasses.replace(
        p, reference_chosen_logp=c["logprob"], reference_rejected_logp=r["logprob"]
    ).to_json() for p, (c, r) in zip(record["pairs"], scored)]
  return out


def _summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  pairs = [p for r in records for p in r["pairs"]]
  by_stage = collections.Counter(p["stage"] for p in pairs)
  sources = collections.Counter(f"{p['stage']}/{p['chosen_source']}" for p in pairs)
  answers = [(a, r["gold"]) for r in records for a in r["recall_answers"]]
  return {"questions": len(records), "pairs": len(pairs), "pairs_by_stage": dict(by_stage),
          "chosen_sources": dict(sources),
          "sampled_chain_accuracy": sum(a == g for a, g in answers) / max(len(answers), 1),
          "questions_with_pairs": sum(bool(r["pairs"]) for r in records)}


CHAINS = "chains.jsonl"


def sample(student, examples: Sequence[Example], teacher: Mapping[str, TeacherFields], *,
           output_dir: str, settings: SampleSettings = SampleSettings(),
           progress: bool = True) -> dict[str, Any]:
  """Writes `<output_dir>/pairs.jsonl`, `chains.jsonl` (every sampled chain by
  question) and `summary.json` (with the compute spent); returns the summary."""
  pairs_path = paths.as_path(output_dir) / "pairs.jsonl"
  summary_path = paths.as_path(output_dir) / "summary.json"
  if summary_path.exists() and pairs_path.exists():
    return paths.read_json(summary_path)  # Finished before.
  records = shards.run_sharded(
      examples, lambda items, k: sample_questions(student, items, teacher, settings,
                                                  seeds.derive(settings.seed, "sample_shard", k)),
      directory=paths.as_path(output_dir) / "shards", name="questions",
      shard_size=settings.shard_size, process_index=jax.process_index(),
      process_count=jax.process_count(), settings=dataclasses.asdict(settings),
      progress=progress, barrier=lambda: shards.sync_processes("sample"),
      compute=(lambda: student.compute) if hasattr(student, "compute") else None)
  summary = _summary(records)
  summary["compute"] = shards.compute_of(paths.as_path(output_dir) / "shards",
                                         "questions").to_json()
  if jax.process_index() == 0:
    # Every sampled chain with its question (rejection-sampling data).
    paths.write_jsonl(paths.as_path(output_dir) / CHAINS, [
        schema.SampledQuestion.from_json(r) for r in records])
    paths.write_jsonl(pairs_path, [p for r in records for p in r["pairs"]])
    paths.write_json(summary_path, summary)
  return summary


def run_sample(*, model_dir: str, output_dir: str, records_path: str,
               dataset: str = "", dataset_path: str = "", split: str = "train",
               split_seed: int = 0, max_examples: Optional[int] = None,
               vocabulary: str = "", model_config: Any = None,
               settings: SampleSettings = SampleSettings(),
               student: student_lib.StudentSettings = student_lib.StudentSettings(),
               progress: bool = True) -> dict[str, Any]:
  """`tinythinker sample`: the questions are the teacher records' (or a dataset split's)."""
  questions, teacher = read_teacher_records(records_path)
  if dataset:
    questions, _ = datasets.load_split(dataset, dataset_path, split, split_seed)
  questions = questions[:max_examples] if max_examples else questions
  policy = student_lib.build(model_dir, vocabulary=vocabulary,
                                    model_config=model_config, settings=student)
  return sample(policy, questions, teacher, output_dir=output_dir, settings=settings,
                progress=progress)
