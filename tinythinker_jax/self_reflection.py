"""TinyThinker phase 2: sample -> preference pairs -> DPO/RPO -> validate, iterated.

- `run_sample` (`tinythinker sample`): with the current policy, sample each
  training question's recall `num_recall_samples` times (T=0.7; the rest of
  the chain greedy), build recall pairs; for chosen recalls sample the
  per-option analyses and build analyze pairs (`reasoning.reflection`); score
  every chosen and rejected sequence with the policy, which is the reference
  of the next DPO round. Sharded by process and resumable by shard.
- `run_dpo` (`tinythinker train --gin_file=runs/dpo.gin`): the phase-1 trainer
  with `training.dpo.PreferenceModel`, recall and analyze batches interleaved.
- `run_reflect` (`tinythinker reflect`): k rounds of the two, each validated
  by greedy chain accuracy, keeping the best policy; resumable between and
  within rounds (`reflect_state.json`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from tinythinker_jax import evaluation, partitioning, shards, vocabularies
from tinythinker_jax.data import arrays
from tinythinker_jax.data.schema import Example
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import chains, reflection
from tinythinker_jax.reasoning.formats import Format
from tinythinker_jax.training import dpo, optimizers, trainer

log = logging.getLogger(__name__)
STAGES = ("recall", "analyze")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """TinyThinker's self-reflection sampling recipe (METHODS.md)."""

  num_recall_samples: int = 10
  temperature: float = 0.7
  top_k: int = 0
  top_p: float = 1.0
  max_chosen_recalls: int = 2  # chosen recalls whose analyses are sampled
  num_analyze_samples: int = 4  # analysis sets sampled per chosen recall
  max_recall_pairs: Optional[int] = None  # per question
  max_analyze_pairs: Optional[int] = None  # per question, option and recall
  shard_size: int = 64  # questions per resumable shard
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class DpoSettings:
  """Phase-2 training (TinyThinker's: RPO, beta 0.5, alpha 0.5, lr 5e-6, batch 32)."""

  batch_size: int = 32
  num_epochs: float = 1.0
  train_steps: Optional[int] = None  # overrides num_epochs
  optimizer: str = "adamw"
  schedule: str = "cosine"
  learning_rate: float = 5e-6
  warmup_fraction: float = 0.1
  weight_decay: float = 0.0
  beta: float = 0.5
  alpha: float = 0.5
  loss_type: str = dpo.SIGMOID
  dropout_rate: float = 0.0
  num_microbatches: int = 1
  input_length: int = 256
  target_length: int = 128
  data_parallelism: int = -1
  model_parallelism: int = 1
  checkpoint_every: int = 1000
  keep_checkpoints: Optional[int] = 1
  log_every: int = 10
  seed: int = 0


# ------------------------------------------------------------------ teacher


@dataclasses.dataclass
class TeacherFields:
  recalls: list[str] = dataclasses.field(default_factory=list)
  analyses: list[dict[str, str]] = dataclasses.field(default_factory=list)


def read_teacher_records(path: str) -> tuple[list[Example], dict[str, TeacherFields]]:
  """TinyThinker teacher records: the questions (in order) and their fields by id."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no teacher records (run `tinythinker teach` with "
                            "METHOD='tinythinker')")
  examples, fields = [], {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        example_id = record["id"]
        if example_id not in fields:
          examples.append(Example.from_json(record["example"]))
          fields[example_id] = TeacherFields()
        fields[example_id].recalls.append(record["recall"])
        fields[example_id].analyses.append(dict(record["analyses"]))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{line_no}: not a TinyThinker record ({e})") from e
  return examples, fields


# ----------------------------------------------------------------- sampling


def sample_questions(student, examples: Sequence[Example],
                     teacher: Mapping[str, TeacherFields], settings: SampleSettings,
                     seed: int) -> list[dict[str, Any]]:
  """One record per question: its sampled answers and its preference pairs."""
  stage = chains.Sampling(settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
  runs = chains.run_staged(examples, student.generate, recall=stage, num_runs=
                           settings.num_recall_samples, seed=seed)
  rng = np.random.default_rng([settings.seed, seed])
  out: list[dict[str, Any]] = []
  analyze_jobs: list[tuple[int, str]] = []
  for i, (example, example_runs) in enumerate(zip(examples, runs)):
    fields = teacher.get(example.id, TeacherFields())
    pairs = reflection.recall_pairs(example, example_runs, fields.recalls, rng,
                                    settings.max_recall_pairs)
    out.append({"id": example.id, "gold": example.gold_label,
                "recall_answers": [r.answer for r in example_runs],
                "pairs": [p.to_json() for p in pairs]})
    for recall in reflection.chosen_recalls(example, example_runs, fields.recalls,
                                            settings.max_chosen_recalls):
      analyze_jobs.append((i, recall))
  if analyze_jobs and settings.num_analyze_samples > 0:
    analyzed = chains.run_staged(
        [examples[i] for i, _ in analyze_jobs], student.generate, analyze=stage,
        recalls=[[r] * settings.num_analyze_samples for _, r in analyze_jobs],
        seed=seed + 1)
    for (i, recall), job_runs in zip(analyze_jobs, analyzed):
      fields = teacher.get(examples[i].id, TeacherFields())
      pairs = reflection.analyze_pairs(examples[i], recall, job_runs,
                                       fields.analyses[0] if fields.analyses else None,
                                       rng, settings.max_analyze_pairs)
      out[i]["pairs"].extend(p.to_json() for p in pairs)
  flat = [p for record in out for p in record["pairs"]]
  if flat:
    prompts = [p["prompt"] for p in flat]
    scores = student.score(prompts + prompts, [p["chosen"] for p in flat] +
                           [p["rejected"] for p in flat])
    for p, c, r in zip(flat, scores[:len(flat)], scores[len(flat):]):
      p["reference_chosen_logp"] = c["logprob"]
      p["reference_rejected_logp"] = r["logprob"]
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


def sample(student, examples: Sequence[Example], teacher: Mapping[str, TeacherFields], *,
           output_dir: str, settings: SampleSettings = SampleSettings(),
           progress: bool = True) -> dict[str, Any]:
  """Writes `<output_dir>/pairs.jsonl` and `summary.json`; returns the summary."""
  pairs_path = os.path.join(output_dir, "pairs.jsonl")
  summary_path = os.path.join(output_dir, "summary.json")
  if os.path.exists(summary_path) and os.path.exists(pairs_path):
    with open(summary_path) as f:
      return json.load(f)  # Finished before.
  records = shards.run_sharded(
      examples, lambda items, k: sample_questions(student, items, teacher, settings,
                                                  settings.seed * 1_000_003 + k * 7),
      directory=os.path.join(output_dir, "shards"), name="questions",
      shard_size=settings.shard_size, process_index=jax.process_index(),
      process_count=jax.process_count(), settings=dataclasses.asdict(settings),
      progress=progress, barrier=lambda: shards.sync_processes("sample"))
  summary = _summary(records)
  if jax.process_index() == 0:
    shards.write_jsonl_atomically(pairs_path, [p for r in records for p in r["pairs"]])
    shards.write_json_atomically(summary_path, summary)
  return summary


def run_sample(*, model_dir: str, output_dir: str, records_path: str,
               dataset: str = "", dataset_path: str = "", split: str = "train",
               split_seed: int = 0, max_examples: Optional[int] = None,
               vocabulary: str = "", model_config: Optional[t5.T5Config] = None,
               settings: SampleSettings = SampleSettings(),
               student: evaluation.StudentSettings = evaluation.StudentSettings(),
               progress: bool = True) -> dict[str, Any]:
  """`tinythinker sample`: the questions are the teacher records' (or a dataset split's)."""
  questions, teacher = read_teacher_records(records_path)
  if dataset:
    questions, _ = evaluation.load_examples(dataset, dataset_path, split, split_seed)
  questions = questions[:max_examples] if max_examples else questions
  policy = evaluation.build_student(model_dir, vocabulary=vocabulary,
                                    model_config=model_config, settings=student)
  return sample(policy, questions, teacher, output_dir=output_dir, settings=settings,
                progress=progress)


# ---------------------------------------------------------------- DPO data


def encode_pairs(pairs: Sequence[dict[str, Any]], codec: vocabularies.TextCodec,
                 input_length: int, target_length: int
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
  """Arrays per stage; pairs that do not fit the lengths are dropped and counted
  (truncating them would make the stored reference log-probabilities wrong)."""
  rows: dict[str, list[tuple]] = {s: [] for s in STAGES}
  dropped = collections.Counter()
  for p in pairs:
    enc = codec.encode(p["prompt"]) + [codec.eos_id]
    chosen = codec.encode(p["chosen"]) + [codec.eos_id]
    rejected = codec.encode(p["rejected"]) + [codec.eos_id]
    if len(enc) > input_length:
      dropped["prompt_too_long"] += 1
    elif max(len(chosen), len(rejected)) > target_length:
      dropped["target_too_long"] += 1
    else:
      rows[p["stage"]].append((enc, chosen, rejected, p["reference_chosen_logp"],
                               p["reference_rejected_logp"]))
  out = {}
  for stage, items in rows.items():
    if not items:
      continue
    def pad(seqs, length):
      array = np.zeros((len(seqs), length), np.int32)
      for i, ids in enumerate(seqs):
        array[i, :len(ids)] = ids
      return array
    out[stage] = {
        "encoder_input_tokens": pad([r[0] for r in items], input_length),
        "chosen_target_tokens": pad([r[1] for r in items], target_length),
        "rejected_target_tokens": pad([r[2] for r in items], target_length),
        "reference_chosen_logps": np.array([r[3] for r in items], np.float32),
        "reference_rejected_logps": np.array([r[4] for r in items], np.float32)}
  return out, dict(dropped)


def _prepare_pairs(pairs_path: str, data_dir: str, codec: vocabularies.TextCodec,
                   input_length: int, target_length: int) -> dict[str, Any]:
  manifest_path = os.path.join(data_dir, "manifest.json")
  source = {"pairs": os.path.abspath(pairs_path), "size": os.path.getsize(pairs_path),
            "input_length": input_length, "target_length": target_length}
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest["source"] == source:
      return manifest
  if jax.process_index() == 0:
    pairs = shards.read_jsonl(pairs_path)
    encoded, dropped = encode_pairs(pairs, codec, input_length, target_length)
    counts = {}
    for stage, features in encoded.items():
      arrays.write_features(os.path.join(data_dir, stage), features)
      counts[stage] = int(len(features["encoder_input_tokens"]))
    manifest = {"source": source, "counts": counts, "dropped": dropped}
    os.makedirs(data_dir, exist_ok=True)
    shards.write_json_atomically(manifest_path, manifest)
  shards.sync_processes("dpo_data")
  with open(manifest_path) as f:
    return json.load(f)


def run_dpo(*, model_dir: str, pairs_path: str, initial_checkpoint_path: str,
            settings: DpoSettings = DpoSettings(), vocabulary: str = "",
            model_config: Optional[t5.T5Config] = None, progress: bool = True,
            stop_after: Optional[int] = None) -> trainer.TrainResult:
  """Phase-2 training from the reference policy on its own preference pairs."""
  from tinythinker_jax import student as student_lib  # pylint: disable=import-outside-toplevel
  reference = student_lib.load(initial_checkpoint_path, model_config=model_config,
                               vocabulary=vocabulary)
  config = reference.config.replace(dropout_rate=settings.dropout_rate)
  codec = vocabularies.TextCodec(reference.vocabulary)
  manifest = _prepare_pairs(pairs_path, os.path.join(model_dir, "data"), codec,
                            settings.input_length, settings.target_length)
  if not manifest["counts"]:
    raise ValueError(f"{pairs_path}: no preference pairs fit input_length="
                     f"{settings.input_length}/target_length={settings.target_length} "
                     f"(dropped: {manifest['dropped']})")
  features = dpo.PREFERENCE_FEATURES
  datasets = {s: arrays.ArrayDataset(os.path.join(model_dir, "data", s), features)
              for s in manifest["counts"]}
  total = sum(manifest["counts"].values())
  steps = settings.train_steps or max(1, math.ceil(settings.num_epochs * total /
                                                   settings.batch_size))
  schedule_obj = None
  if len(datasets) > 1:
    names = tuple(s for s in STAGES if s in datasets)
    counts = np.array([manifest["counts"][n] for n in names], float)
    per_cycle = np.maximum(1, np.round(counts / counts.min())).astype(int)
    schedule_obj = arrays.InterleavedSchedule(names, tuple(int(c) for c in per_cycle))
  mesh = partitioning.create_mesh(settings.data_parallelism, settings.model_parallelism)
  partitioner = partitioning.Partitioner(mesh)
  layout = partitioner.data_layout(settings.batch_size)
  source = arrays.BatchSource(datasets, settings.batch_size, settings.seed, schedule_obj,
                              local=layout.local_slice)
  warmup = int(settings.warmup_fraction * steps)
  lr = optimizers.make_schedule(settings.schedule, learning_rate=settings.learning_rate,
                                warmup_steps=warmup, total_steps=max(steps, warmup + 1))
  model = dpo.PreferenceModel(t5.T5(config), beta=settings.beta, alpha=settings.alpha,
                              loss_type=settings.loss_type)
  return trainer.train(
      model=model, model_config=config,
      optimizer=optimizers.make_optimizer(settings.optimizer, lr,
                                          weight_decay=settings.weight_decay),
      partitioner=partitioner, batch_fn=source, global_batch_size=settings.batch_size,
      train_steps=steps, model_dir=model_dir, seed=settings.seed,
      num_microbatches=settings.num_microbatches, dropout=settings.dropout_rate > 0,
      checkpoint=trainer.CheckpointSettings(settings.checkpoint_every,
                                            settings.keep_checkpoints),
      initial_params=lambda: reference.params, log_every=settings.log_every,
      schedule=lr, progress=progress, stop_after=stop_after,
      meta={"phase": "dpo", "reference": os.path.abspath(initial_checkpoint_path),
            "pairs": os.path.abspath(pairs_path), "vocabulary": reference.vocabulary,
            "pairs_by_stage": manifest["counts"]})


# -------------------------------------------------------------- iteration


def validate(model_dir: str, examples: Sequence[Example], answer_type, *,
             output_dir: str, student: evaluation.StudentSettings, vocabulary: str = "",
             progress: bool = True) -> float:
  """Greedy TinyThinker chain accuracy (TinyThinker's model selection)."""
  policy = evaluation.build_student(model_dir, vocabulary=vocabulary, settings=student)
  records = evaluation.infer(policy, examples, fmt=Format.TINYTHINKER,
                             answer_type=answer_type, output_dir=output_dir,
                             name="validation", progress=progress)
  return evaluation.summarize_records(records)["accuracy"]


def run_reflect(*, output_dir: str, initial_model_dir: str, records_path: str,
                dataset: str, dataset_path: str = "", validation_split: str = "validation",
                max_validation_examples: Optional[int] = None,
                max_train_examples: Optional[int] = None, split_seed: int = 0,
                rounds: int = 5, vocabulary: str = "",
                sample_settings: SampleSettings = SampleSettings(),
                dpo_settings: DpoSettings = DpoSettings(),
                student: evaluation.StudentSettings = evaluation.StudentSettings(),
                progress: bool = True) -> dict[str, Any]:
  """k rounds of sample -> pairs -> DPO -> validate, keeping the best policy.

  Round r samples with, and takes as DPO reference, the best policy so far.
  State is in `<output_dir>/reflect_state.json`; a restarted run skips
  finished rounds, and within a round the sampler and trainer resume.
  """
  os.makedirs(output_dir, exist_ok=True)
  state_path = os.path.join(output_dir, "reflect_state.json")
  state: dict[str, Any] = {"rounds": [], "best": None}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)
  questions, teacher = read_teacher_records(records_path)
  questions = questions[:max_train_examples] if max_train_examples else questions
  valid, answer_type = evaluation.load_examples(dataset, dataset_path, validation_split,
                                                split_seed, max_validation_examples)
  if state["best"] is None:
    accuracy = validate(initial_model_dir, valid, answer_type,
                        output_dir=os.path.join(output_dir, "round_0"), student=student,
                        vocabulary=vocabulary, progress=progress)
    state["best"] = {"round": 0, "model_dir": os.path.abspath(initial_model_dir),
                     "validation_accuracy": accuracy}
    state["initial"] = dict(state["best"])
    if jax.process_index() == 0:
      shards.write_json_atomically(state_path, state)
  for round_index in range(len(state["rounds"]) + 1, rounds + 1):
    round_dir = os.path.join(output_dir, f"round_{round_index}")
    policy_dir = state["best"]["model_dir"]
    policy = evaluation.build_student(policy_dir, vocabulary=vocabulary, settings=student)
    settings = dataclasses.replace(sample_settings,
                                   seed=sample_settings.seed + 1000 * round_index)
    summary = sample(policy, questions, teacher, output_dir=os.path.join(round_dir,
                                                                         "samples"),
                     settings=settings, progress=progress)
    del policy
    record: dict[str, Any] = {"round": round_index, "policy": policy_dir,
                              "samples": summary}
    if summary["pairs"] == 0:
      record["skipped"] = "no preference pairs: every sampled chain agreed"
    else:
      model_dir = os.path.join(round_dir, "model")
      result = run_dpo(model_dir=model_dir,
                       pairs_path=os.path.join(round_dir, "samples", "pairs.jsonl"),
                       initial_checkpoint_path=policy_dir, settings=dpo_settings,
                       vocabulary=vocabulary, progress=progress)
      accuracy = validate(model_dir, valid, answer_type, output_dir=round_dir,
                          student=student, vocabulary=vocabulary, progress=progress)
      record.update(model_dir=os.path.abspath(model_dir), validation_accuracy=accuracy,
                    train_metrics=result.last_metrics)
      if accuracy > state["best"]["validation_accuracy"]:
        state["best"] = {"round": round_index, "model_dir": os.path.abspath(model_dir),
                         "validation_accuracy": accuracy}
    state["rounds"].append(record)
    if jax.process_index() == 0:
      shards.write_json_atomically(state_path, state)
    log.info("round %d: %s; best is round %d (%.3f)", round_index,
             record.get("validation_accuracy", record.get("skipped")),
             state["best"]["round"], state["best"]["validation_accuracy"])
  return state
