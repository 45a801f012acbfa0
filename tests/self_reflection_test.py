"""Issue 5 end to end on a tiny TinyThinker student trained here (CLI subprocesses):
`infer`, `evaluate`, `score`, `sample` and a two-round `reflect` from gin configs.

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

import numpy as np
import pytest

from tinythinker_jax import checkpoints, vocabularies
from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import formats
from tinythinker_jax.teacher import pipelines

SMALL = ["--gin.t5.T5Config.emb_dim=32", "--gin.t5.T5Config.num_heads=2",
         "--gin.t5.T5Config.head_dim=16", "--gin.t5.T5Config.mlp_dim=64",
         "--gin.t5.T5Config.num_encoder_layers=2", "--gin.t5.T5Config.num_decoder_layers=2"]
LENGTHS = ["--gin.evaluation.StudentSettings.max_input_length=96",
           "--gin.evaluation.StudentSettings.max_decode_length=32"]


def cli(verb, *args, cwd):
  result = subprocess.run([sys.executable, "-m", "tinythinker_jax.main", verb, *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """Rule-based TinyThinker rationales for Coin Flip and a briefly trained tiny T5
  (half-trained on purpose: its chains are right and wrong, as phase 2 needs)."""
  root = tmp_path_factory.mktemp("tt")
  splits = datasets.load_dataset("coin_flip", seed=0)
  for split in ("train", "validation"):
    pipelines.teach(splits[split], method=pipelines.Method.TINYTHINKER,
                    answer_type=AnswerType.YES_NO,
                    output_dir=str(root / "rationales" / "coin_flip" / "tinythinker" / split),
                    teacher=None, progress=False)
  records = root / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  cli("vocab", f"--input={records}", "--format=tinythinker", "--size=64",
      "--model_type=word", f"--output={root / 'spm'}", cwd=root)
  cli("train", "--gin_file=experiments/coin_flip_tinythinker.gin",
      "--gin.MODEL_DIR='model'", "--gin.RECORDS_DIR='rationales'",
      f"--gin.VOCABULARY='{root / 'spm.model'}'", "--gin.TRAIN_STEPS=200",
      "--gin.BATCH_SIZE=16", "--gin.sft.run.eval_every=0", *SMALL, cwd=root)
  return root


@functools.lru_cache(maxsize=None)
def _params(model_dir):
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"))
  try:
    return checkpointer.restore_params()
  finally:
    checkpointer.close()


def teacher_forced_logp(model_dir, vocab, prompt, target):
  """log p(target + EOS | prompt): one full forward pass and an explicit sum."""
  params = _params(str(model_dir))
  config = t5.T5Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=2, num_decoder_layers=2,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                       dropout_rate=0.0)
  codec = vocabularies.TextCodec(vocab)
  enc = np.array([codec.encode(prompt) + [1]], np.int32)
  tgt = codec.encode(target) + [1]
  dec = np.array([[0] + tgt[:-1]], np.int32)
  logits = np.asarray(t5.T5(config).apply({"params": params}, enc, dec), np.float64)[0]
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return float(sum(logp[i, t] for i, t in enumerate(tgt)))


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
      "--gin.self_reflection.SampleSettings.num_recall_samples=6",
      "--gin.self_reflection.SampleSettings.shard_size=8", cwd=student)
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
    chosen, rejected = by_prompt[p["prompt"]]
    chosen.add(p["chosen"])
    rejected.add(p["rejected"])
  for chosen, rejected in by_prompt.values():
    assert not chosen & rejected  # strings in both sets were dropped
  # Shards of 8 questions; a rerun finds the work done.
  assert len(list((student / "samples" / "shards").glob("questions-*.jsonl"))) == 3
  for p in pairs[:3] + pairs[-3:]:
    for field in ("chosen", "rejected"):
      expected = teacher_forced_logp(student / "model", str(student / "spm.model"),
                                     p["prompt"], p[field])
      assert math.isclose(p[f"reference_{field}_logp"], expected, rel_tol=1e-4,
                          abs_tol=2e-4), (p, field, expected)

  # One phase-2 training run on these pairs: `tinythinker train` with runs/dpo.gin.
  out = cli("train", "--gin_file=runs/dpo.gin", "--gin.MODEL_DIR='dpo'",
            "--gin.INITIAL_CHECKPOINT_PATH='model'", "--gin.PAIRS_PATH='samples/pairs.jsonl'",
            "--gin.INPUT_LENGTH=96", "--gin.TARGET_LENGTH=32",
            "--gin.self_reflection.DpoSettings.batch_size=8",
            "--gin.self_reflection.DpoSettings.train_steps=3",
            "--gin.self_reflection.DpoSettings.log_every=1", cwd=student)
  assert out.startswith("step 3:")
  rows = [json.loads(l) for l in (student / "dpo" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
  assert rows[0]["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-3)
  assert "self_reflection.run_dpo" in (student / "dpo" / "config.gin").read_text()


def test_sigkilled_sample_resumes_without_redoing_shards(student):
  """Killed after its first shards, `sample` finishes with the same pairs as a run
  that was never interrupted, and leaves finished shards untouched."""
  args = [sys.executable, "-m", "tinythinker_jax.main", "sample", "--gin.MODEL_DIR='model'",
          f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
          "--gin.MAX_EXAMPLES=24", "--gin.INPUT_LENGTH=96", "--gin.TARGET_LENGTH=32",
          "--gin.self_reflection.SampleSettings.num_recall_samples=6",
          "--gin.self_reflection.SampleSettings.shard_size=4"]
  straight = student / "sample_straight"
  killed = student / "sample_killed"
  subprocess.run(args + [f"--gin.OUTPUT_DIR='{straight}'"], check=True, cwd=student,
                 capture_output=True, timeout=900)
  process = subprocess.Popen(args + [f"--gin.OUTPUT_DIR='{killed}'"], cwd=student,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  shard_dir = killed / "shards"
  deadline = time.time() + 600
  while time.time() < deadline and len(list(shard_dir.glob("questions-*.jsonl"))) < 2:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = {p.name: (p.stat().st_mtime_ns, p.read_text())
              for p in shard_dir.glob("questions-*.jsonl")}
  assert 2 <= len(finished) < 6, finished.keys()
  assert not (killed / "pairs.jsonl").exists()
  subprocess.run(args + [f"--gin.OUTPUT_DIR='{killed}'"], check=True, cwd=student,
                 capture_output=True, timeout=900)
  for name, (mtime, text) in finished.items():
    assert (shard_dir / name).stat().st_mtime_ns == mtime
    assert (shard_dir / name).read_text() == text
  assert (killed / "pairs.jsonl").read_text() == (straight / "pairs.jsonl").read_text()


def test_two_rounds_of_self_reflection_from_gin(student):
  args = ["--gin_file=experiments/coin_flip_reflect.gin", "--gin.INITIAL_MODEL_DIR='model'",
          "--gin.OUTPUT_DIR='reflect'",
          f"--gin.RECORDS_PATH='{student}/rationales/coin_flip/tinythinker/train/records.jsonl'",
          "--gin.MAX_TRAIN_EXAMPLES=24", "--gin.MAX_VALIDATION_EXAMPLES=32",
          "--gin.self_reflection.SampleSettings.num_recall_samples=6",
          "--gin.self_reflection.DpoSettings.batch_size=16",
          "--gin.self_reflection.DpoSettings.train_steps=6",
          "--gin.self_reflection.DpoSettings.log_every=1"]
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
    accuracies.append(record["validation_accuracy"])
  assert best["validation_accuracy"] == max(accuracies)
  # Round 2 sampled with (and took as reference) the best policy after round 1.
  first_round = state["rounds"][0]
  improved = first_round.get("validation_accuracy", -1) > initial["validation_accuracy"]
  assert state["rounds"][1]["policy"] == (first_round["model_dir"] if improved
                                          else initial["model_dir"])
  # Started again, it finds every round done and changes nothing.
  before = (student / "reflect" / "reflect_state.json").read_text()
  cli("reflect", *args, cwd=student)
  assert (student / "reflect" / "reflect_state.json").read_text() == before
