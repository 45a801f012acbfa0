"""`tinythinker infer`: a student's reasoning chains over a dataset split.

`run_infer` writes one record per example (each chain's recall, analyses,
summary or output, parsed answer, per-stage log-probabilities, and the voted
answer) as JSONL. Work is cut into shards (`tinythinker_jax.shards`): several
processes share it, and a killed run resumes without redoing finished shards.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax

from tinythinker_jax import paths, seeds, shards
from tinythinker_jax import student as student_lib
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType, Example
from tinythinker_jax.reasoning import chains, ranking
from tinythinker_jax.reasoning.formats import Format


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
                         seed=seeds.derive(seed, f"infer/{name}", index))
  settings = {"format": fmt.value, "sampled": sampled, "num_runs": num_runs,
              "temperature": temperature, "seed": seed,
              "examples": [e.id for e in examples[:3]]}
  return shards.run_sharded(examples, work, directory=paths.as_path(output_dir) / name,
                            name=name, shard_size=shard_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), settings=settings,
                            progress=progress,
                            barrier=lambda: shards.sync_processes(f"infer_{name}"),
                            compute=((lambda: student.compute)
                                     if hasattr(student, "compute") else None))


def rank(student, examples: Sequence[Example], *, output_dir: str,
         settings: ranking.RankSettings = ranking.RankSettings(), name: str = "rank",
         shard_size: int = 256, progress: bool = True) -> list[dict[str, Any]]:
  """Rank classification (`reasoning.ranking`) of every example, by the student's
  log-likelihood of each option's text; resumable shards like `infer`'s."""
  settings.check()

  def work(items, index):
    del index
    requests = [ranking.rank_requests(e, settings) for e in items]
    # All of a question's options share its prompt: read once for all of them.
    scores = student.score_options([pairs[0][0] for pairs in requests],
                                   [[t for _, t in pairs] for pairs in requests])
    return [ranking.rank_record(example, [s["logprob"] for s in mine],
                                [s["num_tokens"] for s in mine])
            for example, mine in zip(items, scores)]
  return shards.run_sharded(examples, work, directory=paths.as_path(output_dir) / name,
                            name=name, shard_size=shard_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            settings={"prompt": settings.prompt, "target": settings.target,
                                      "examples": [e.id for e in examples[:3]]},
                            progress=progress,
                            barrier=lambda: shards.sync_processes(f"rank_{name}"),
                            compute=((lambda: student.compute)
                                     if hasattr(student, "compute") else None))


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  n = max(len(records), 1)
  runs = sum(len(r["runs"]) for r in records)
  return {"accuracy": sum(r["correct"] for r in records) / n,
          "format_error_rate": sum(r["format_errors"] for r in records) / max(runs, 1),
          "no_answer_rate": sum(r["answer"] is None for r in records) / n,
          "num_examples": len(records), "runs_per_example": runs / n}


def run_infer(*, model_dir: str, dataset: str, output_dir: str, format: str,  # noqa: A002
              dataset_path: str = "", split: str = "test", sampled: bool = False,
              num_runs: int = 1, temperature: float = 0.7,
              max_examples: Optional[int] = None, split_seed: int = 0, seed: int = 0,
              vocabulary: str = "", model_config: Any = None,
              student: student_lib.StudentSettings = student_lib.StudentSettings(), shard_size: int = 256,
              progress: bool = True) -> str:
  """Writes `<output_dir>/predictions.jsonl`; returns its path."""
  examples, answer_type = datasets.load_split(dataset, dataset_path, split, split_seed,
                                        max_examples)
  model = student_lib.build(model_dir, vocabulary=vocabulary, model_config=model_config,
                        settings=student)
  records = infer(model, examples, fmt=Format(format), answer_type=answer_type,
                  output_dir=output_dir, sampled=sampled, num_runs=num_runs,
                  temperature=temperature, seed=seed, shard_size=shard_size,
                  progress=progress)
  path = paths.as_path(output_dir) / "predictions.jsonl"
  if jax.process_index() == 0:
    paths.write_jsonl(path, records)
  return str(path)
