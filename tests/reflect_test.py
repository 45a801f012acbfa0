"""Issue 5 end to end on the session's tiny TinyThinker student (`tiny_student`):
`infer`, `evaluate`, `score`, `sample`, phase-2 `train` and a two-round `reflect`
from gin configs, run through each binary's `main` in this process on one device
(the SIGKILL test runs `sample` as a subprocess).

Each output is checked against an independent recomputation: chain records
against the examples' gold labels, report figures against the records,
reference log-probabilities against a teacher-forced forward pass written here.
"""

import collections
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import STUDENT_CONFIG, one_device_env, teacher_forced_logps
from tinythinker_jax import checkpoints
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import datasets
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import formats

ONE_DEVICE = ["--gin.student.StudentSettings.data_parallelism=1"]
LENGTHS = ["--gin.student.StudentSettings.max_input_length=96",
           "--gin.student.StudentSettings.max_decode_length=32"] + ONE_DEVICE


def cli(verb, *args, cwd):
  """`tinythinker VERB ARGS` through the binary's `main`, in this process."""
  import contextlib
  import io
  import gin
  from tinythinker_jax.cli import main
  gin.clear_config()
  out = io.StringIO()
  previous = os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(out):
      assert main.main([verb, *args]) == 0
  finally:
    os.chdir(previous)
    gin.clear_config()
  return out.getvalue()


@pytest.fixture(scope="module")
def student(tiny_student):
  return tiny_student


@functools.lru_cache(maxsize=None)
def _params(model_dir):
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"), create=False)
  try:
    return checkpointer.restore_params()
  finally:
    checkpointer.close()


def teacher_forced_logp(model_dir, vocab, prompt, target):
  """log p(target + EOS | prompt): one full forward pass and an explicit sum."""
  codec = vocabularies.TextCodec(vocab)
  return float(sum(teacher_forced_logps(t5.T5Config(**STUDENT_CONFIG),
                                        _params(str(model_dir)),
                                        codec.encode(prompt) + [1],
                                        codec.encode(target) + [1])))


def test_infer_and_score(student):
  cli("infer", "--gin.MODEL_DIR='model'", "--gin.DATASET='coin_flip'",
      "--gin.SPLIT='validation'", "--gin.OUTPUT_DIR='infer'", "--gin.MAX_EXAMPLES=24",
      *LENGTHS, cwd=student)
  with open(student / "infer" / "predictions.jsonl") as f:
    records = [json.loads(line) for line in f]
  examples = datasets.load_dataset("coin_flip", seed=0)["validation"][:24]
  assert [r["id"] for r in records] == [e.id for e in examples]
  for record, example in zip(records, examples):
    (run,) = record["runs"]
    assert set(run["analyses"]) == {"A", "B"}
    assert run["recall"].endswith(".")
    assert set(run["logprobs"]) == {"recall", "analyze", "summarize"}
    parsed = formats.parse_summary(run["output"], example.labels)
    assert run["answer"] == parsed.value
    assert record["correct"] == (parsed.value == example.gold_label)

  # The recall's log-probability (from the KV-cached decoder) equals teacher forcing,
  # and `tinythinker score` prints the same number.
  first, example = records[0]["runs"][0], examples[0]
  recall_text = first["recall"]
  expected = teacher_forced_logp(student / "model", str(student / "spm.model"),
                                 formats.recall_input(example), recall_text)
  out = cli("score", "--model_dir=model", f"--input={formats.recall_input(example)}",
            f"--target={recall_text}", cwd=student)
  scored = json.loads(out.strip().splitlines()[-1])
  assert math.isclose(scored["logprob"], expected, rel_tol=1e-4, abs_tol=1e-4)


def test_evaluate_report_matches_its_records(student):
  cli("evaluate", "--gin.MODEL_DIR='model'", "--gin.DATASET='coin_flip'",
      "--gin.SPLIT='validation'", "--gin.OUTPUT_DIR='eval'", "--gin.MAX_EXAMPLES=32",
      "--gin.NUM_RUNS=3", *LENGTHS, cwd=student)
  report = json.loads((student / "eval" / "report.json").read_text())
  examples = {e.id: e for e in datasets.load_dataset("coin_flip", seed=0)["validation"]}

  def read(name):
    directory = student / "eval" / name
    return [json.loads(line) for p in sorted(directory.glob(f"{name}-*.jsonl"))
            for line in p.read_text().splitlines()]
  greedy, sampled = read("greedy"), read("self_consistency")
  assert len(greedy) == len(sampled) == 32
  accuracy = np.mean([r["runs"][0]["answer"] == examples[r["id"]].gold_label
                      for r in greedy])
  assert report["greedy"]["accuracy"] == pytest.approx(accuracy)
  votes = []
  for r in sampled:
    assert len(r["runs"]) == 3
    counts = collections.Counter(x["answer"] for x in r["runs"] if x["answer"])
    top = max(counts.values()) if counts else 0
    # Ties go to the answer reached first.
    vote = next((x["answer"] for x in r["runs"] if x["answer"] and
                 counts[x["answer"]] == top), None)
    votes.append(vote == examples[r["id"]].gold_label)
  assert report["self_consistency"]["accuracy"] == pytest.approx(np.mean(votes))
  matrix = report["confusion"]["matrix"]
  assert sum(sum(row.values()) for row in matrix.values()) == 32
  assert matrix["A"].get("A", 0) + matrix["B"].get("B", 0) == round(accuracy * 32)
  markdown = (student / "eval" / "report.md").read_text()
  assert "| greedy |" in markdown and "self-consistency (3 runs" in markdown


def test_sample_builds_pairs_with_reference_logps(student):
  cli("sample", "--gin.MODEL_DIR='model'", "--gin.OUTPUT_DIR='samples'",
      f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
      "--gin.MAX_EXAMPLES=24", "--gin.INPUT_LENGTH=96", "--gin.TARGET_LENGTH=32",
      "--gin.sample.SampleSettings.num_recall_samples=6",
      "--gin.sample.SampleSettings.shard_size=8", *ONE_DEVICE, cwd=student)
  pairs = [json.loads(line) for line in
           (student / "samples" / "pairs.jsonl").read_text().splitlines()]
  summary = json.loads((student / "samples" / "summary.json").read_text())
  assert summary["pairs"] == len(pairs) > 0
  assert {p["stage"] for p in pairs} == {"recall", "analyze"}
  examples = {e.id: e for e in datasets.load_dataset("coin_flip", seed=0)["train"]}
  by_prompt = collections.defaultdict(lambda: (set(), set()))
  for p in pairs:
    example = examples[p["example_id"]]
    assert p["chosen"] != p["rejected"]
    if p["stage"] == "recall":
      assert p["prompt"] == formats.recall_input(example)
    else:
      assert p["prompt"] == formats.analyze_input(example, p["recall"], p["option"])
    if p["stage"] == "recall":
      chosen, rejected = by_prompt[p["prompt"]]
      chosen.add(p["chosen"])
      rejected.add(p["rejected"])
  # Recall strings in both sets were dropped (analyze chains are made distinct on
  # their whole tuple of analyses, as TinyThinker does; chains_test checks that).
  for chosen, rejected in by_prompt.values():
    assert not chosen & rejected
  # Shards of 8 questions; a rerun finds the work done.
  assert len(list((student / "samples" / "shards").glob("questions-*.jsonl"))) == 3
  for p in pairs[:3] + pairs[-3:]:
    for field in ("chosen", "rejected"):
      expected = teacher_forced_logp(student / "model", str(student / "spm.model"),
                                     p["prompt"], p[field])
      assert math.isclose(p[f"reference_{field}_logp"], expected, rel_tol=1e-4,
                          abs_tol=2e-4), (p, field, expected)

  # One phase-2 training run on these pairs, on the phase-1 path's full settings:
  # FSDP over 2 devices (parameters' embed dimension sharded over `data`), two
  # microbatches, gradient clipping and z-loss.
  from tinythinker_jax.stages import phase2
  from tinythinker_jax.training import recipe
  settings = phase2.DpoSettings(input_length=96, target_length=32, train=recipe.TrainSettings(
      batch_size=8, train_steps=3, optimizer="adamw", schedule="cosine",
      learning_rate=5e-6, warmup_fraction=0.1, max_grad_norm=1.0, z_loss=1e-4,
      num_microbatches=2, parameter_partitioning_dims=2, data_parallelism=2,
      log_every=1,
      async_checkpoints=False))
  result = phase2.run_dpo(model_dir=str(student / "dpo"),
                         pairs_path=str(student / "samples" / "pairs.jsonl"),
                         initial_checkpoint_path=str(student / "model"), settings=settings,
                         progress=False)
  assert int(result.state.step) == 3
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(result.state.params)}
  assert any("data" in spec for spec in specs), specs  # FSDP: parameters over `data`
  rows = [json.loads(l) for l in (student / "dpo" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
  # The reference is the policy itself, so DPO starts at log 2 (z-loss is apart).
  assert rows[0]["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-3)
  assert rows[0]["train/z_loss"] > 0 and rows[0]["train/grad_norm"] > 0


def test_sigkilled_sample_resumes_without_redoing_shards(student):
  """Killed after its first shards, `sample` finishes with the same pairs as a run
  that was never interrupted, and leaves finished shards untouched."""
  args = ["--gin.MODEL_DIR='model'",
          f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
          "--gin.MAX_EXAMPLES=24", "--gin.INPUT_LENGTH=96", "--gin.TARGET_LENGTH=32",
          "--gin.sample.SampleSettings.num_recall_samples=6",
          "--gin.sample.SampleSettings.shard_size=4", *ONE_DEVICE]
  straight = student / "sample_straight"
  killed = student / "sample_killed"
  cli("sample", *args, f"--gin.OUTPUT_DIR='{straight}'", cwd=student)
  process = subprocess.Popen(
      [sys.executable, "-m", "tinythinker_jax.cli.sample", *args,
       f"--gin.OUTPUT_DIR='{killed}'"], cwd=student, env=one_device_env(),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  shard_dir = killed / "shards"
  deadline = time.time() + 600
  while time.time() < deadline and len(list(shard_dir.glob("questions-*.jsonl"))) < 2:
    assert process.poll() is None, "sample ended before it was killed"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = {p.name: (p.stat().st_mtime_ns, p.read_text())
              for p in shard_dir.glob("questions-*.jsonl")}
  assert 2 <= len(finished) < 6, finished.keys()
  assert not (killed / "pairs.jsonl").exists()
  cli("sample", *args, f"--gin.OUTPUT_DIR='{killed}'", cwd=student)
  for name, (mtime, text) in finished.items():
    assert (shard_dir / name).stat().st_mtime_ns == mtime
    assert (shard_dir / name).read_text() == text
  assert (killed / "pairs.jsonl").read_text() == (straight / "pairs.jsonl").read_text()


def test_two_rounds_of_self_reflection_from_gin(student):
  args = ["--gin_file=experiments/coin_flip_reflect.gin", "--gin.INITIAL_MODEL_DIR='model'",
          "--gin.OUTPUT_DIR='reflect'",
          f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
          "--gin.MAX_TRAIN_EXAMPLES=24", "--gin.MAX_VALIDATION_EXAMPLES=32",
          "--gin.sample.SampleSettings.num_recall_samples=6",
          "--gin.dpo/recipe.TrainSettings.batch_size=16",
          "--gin.dpo/recipe.TrainSettings.num_epochs=None",
          "--gin.dpo/recipe.TrainSettings.train_steps=6",
          "--gin.dpo/recipe.TrainSettings.eval_every_epochs=None",
          "--gin.dpo/recipe.TrainSettings.eval_every=3",
          "--gin.dpo/recipe.TrainSettings.data_parallelism=1",
          "--gin.dpo/recipe.TrainSettings.log_every=1", *ONE_DEVICE]
  cli("reflect", *args, cwd=student)
  state = json.loads((student / "reflect" / "reflect_state.json").read_text())
  assert [r["round"] for r in state["rounds"]] == [1, 2]
  initial = state["initial"]
  validation = [json.loads(line) for line in next(
      (student / "reflect" / "round_0" / "validation").glob("validation-*.jsonl")
  ).read_text().splitlines()]
  assert len(validation) == 32
  assert initial["validation_accuracy"] == pytest.approx(
      np.mean([r["correct"] for r in validation]))
  accuracies = [initial["validation_accuracy"]]
  best = state["best"]
  for record in state["rounds"]:
    if "skipped" in record:
      continue
    model_dir = record["model_dir"]
    meta_dir = os.path.join(model_dir, "checkpoints", "6")
    assert os.path.isdir(meta_dir)
    rows = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
    first = next(r for r in rows if "train/preference_loss" in r)
    # The reference is the sampling policy (the starting point), so DPO starts at log 2.
    assert first["step"] == 1
    assert first["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-3)
    # Validated every 3 steps (the reference, step 0, is not a candidate); each
    # evaluation's accuracy is its chains' mean, and the round keeps the best one.
    history = dict(record["validation_history"])
    assert sorted(history) == [3, 6]
    for step, value in history.items():
      chains = [json.loads(l) for l in open(os.path.join(model_dir, "validation",
                                                          f"step_{step}.jsonl"))]
      assert len(chains) == 32
      assert value == pytest.approx(np.mean([c["correct"] for c in chains]))
    assert record["validation_accuracy"] == max(history.values())
    assert history[record["best_step"]] == max(history.values())
    assert min(s for s, v in history.items() if v == max(history.values())) == \
        record["best_step"]
    accuracies.append(record["validation_accuracy"])
  assert best["validation_accuracy"] == max(accuracies)
  # Round 2 sampled with (and took as reference) round 1's best evaluation, as
  # TinyThinker's script does, even if it validated below phase 1's model.
  first_round = state["rounds"][0]
  assert state["rounds"][1]["policy"] == first_round.get("model_dir",
                                                         initial["model_dir"])
  # Started again, it finds every round done and changes nothing.
  before = (student / "reflect" / "reflect_state.json").read_text()
  cli("reflect", *args, cwd=student)
  assert (student / "reflect" / "reflect_state.json").read_text() == before


def test_rejection_sampling_rounds_from_gin(student):
  """`reflect` with objective='rft': the round trains the three-stage loss on the
  policy's own chains that reached the gold option, for a given FLOPs budget."""
  budget = 3e8
  args = ["--gin_file=experiments/coin_flip_reflect.gin", "--gin.INITIAL_MODEL_DIR='model'",
          "--gin.OUTPUT_DIR='rft'", "--gin.ROUNDS=1",
          f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
          "--gin.MAX_TRAIN_EXAMPLES=16", "--gin.MAX_VALIDATION_EXAMPLES=16",
          "--gin.sample.SampleSettings.num_recall_samples=6",
          "--gin.sample.SampleSettings.num_analyze_samples=2",
          "--gin.reflect.run_reflect.objective='rft'",
          f"--gin.reflect.run_reflect.train_budgets=[{budget}]",
          "--gin.rft/recipe.TrainSettings.batch_size=16",
          "--gin.rft/recipe.TrainSettings.evaluations=2",
          "--gin.rft/recipe.TrainSettings.data_parallelism=1", *ONE_DEVICE]
  cli("reflect", *args, cwd=student)
  state = json.loads((student / "rft" / "reflect_state.json").read_text())
  [record] = state["rounds"]
  assert record["objective"] == "rft" and "skipped" not in record
  round_dir = student / "rft" / "round_1"
  # The training records are exactly the distinct complete chains that reached gold.
  sampled = [json.loads(l) for l in (round_dir / "samples" / "chains.jsonl").open()]
  expected = set()
  for question in sampled:
    for chain in question["chains"]:
      analyses = chain["analyses"] or {}
      if (chain["answer"] == question["gold"] and (chain["recall"] or "").strip() and
          all((analyses.get(l) or "").strip() for l in ("A", "B"))):
        expected.add((question["id"], chain["recall"].strip(),
                      analyses["A"].strip(), analyses["B"].strip()))
  records = [json.loads(l) for l in (round_dir / "rationales" / "coin_flip" / "tinythinker"
                                     / "train" / "records.jsonl").open()]
  assert expected and {(r["id"], r["recall"], r["analyses"]["A"], r["analyses"]["B"])
                       for r in records} == expected
  assert len(records) == len(expected)
  # Trained for the budget: the first step whose FLOPs reach it.
  spent = json.loads((round_dir / "model" / "compute.json").read_text())
  step = spent["train_flops"] / spent["train_steps"]
  assert budget <= spent["train_flops"] < budget + step
  assert record["compute"]["train_flops"] == spent["train_flops"]
  assert record["compute"]["sample_flops"] > 0
  # Selected by validation, the starting policy (step 0) a candidate.
  assert sorted(dict(record["validation_history"]))[0] == 0


def test_infer_by_beam_search_from_gin(student):
  """`NUM_BEAMS = 3` decodes the greedy stages by beam search: each recall is the
  best beam of `decoding.beam_search` on its prompt, run here directly."""
  import jax.numpy as jnp
  from tinythinker_jax import decoding
  cli("infer", "--gin.MODEL_DIR='model'", "--gin.DATASET='coin_flip'",
      "--gin.SPLIT='validation'", "--gin.OUTPUT_DIR='beam'", "--gin.MAX_EXAMPLES=6",
      "--gin.NUM_BEAMS=3", *LENGTHS, cwd=student)
  records = [json.loads(l) for l in (student / "beam" / "predictions.jsonl").open()]
  examples = datasets.load_dataset("coin_flip", seed=0)["validation"][:6]
  codec = vocabularies.TextCodec(str(student / "spm.model"))
  params = _params(str(student / "model"))
  model = t5.T5(t5.T5Config(**STUDENT_CONFIG))
  search = jax.jit(lambda p, e: decoding.beam_search(model, p, e, beam_size=3,
                                                     max_length=32))
  def best_beam(prompt):
    ids = codec.encode(prompt) + [1]
    best = search(params, jnp.array([ids + [0] * (96 - len(ids))], jnp.int32))
    n = int(best.lengths[0, 0])
    return codec.decode(np.asarray(best.tokens[0, 0, :n])), float(best.scores[0, 0])

  greedy_decode = jax.jit(lambda p, e: decoding.greedy_decode(model, p, e, max_length=32))
  differs = 0
  for record, example in zip(records, examples):
    run = record["runs"][0]
    text, score = best_beam(formats.recall_input(example))
    assert run["recall"] == formats.ensure_period(text)
    assert run["logprobs"]["recall"] == pytest.approx(score, rel=1e-4, abs=1e-4)
    # The analyses too (where beam search and greedy decoding mostly differ here).
    for label in ("A", "B"):
      prompt = formats.analyze_input(example, run["recall"], label)
      text, _ = best_beam(prompt)
      assert run["analyses"][label] == text.strip()
      ids = codec.encode(prompt) + [1]
      out = greedy_decode(params, jnp.array([ids + [0] * (96 - len(ids))], jnp.int32))
      differs += codec.decode(np.asarray(out.tokens[0, :int(out.lengths[0])])) != text
  assert differs  # greedy decoding would not have passed
