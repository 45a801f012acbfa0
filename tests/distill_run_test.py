"""Distillation from a teacher's distribution as runs: phase 1 with a teacher
(`stages.phase1.run(teacher_checkpoint_path=...)`, `tinythinker train
--gin_file=runs/distill.gin`), for a T5 student and a decoder-only student, both
taught by a trained T5 (the tiny student of conftest) that shares their
tokenizer; a different tokenizer stops the run before it trains."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import STUDENT_LENGTHS, one_device_env
from tinythinker_jax import checkpoints, compute, errors
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.models import t5
from tinythinker_jax.stages import phase1
from tinythinker_jax.training import distillation, recipe

TASK = "tinythinker.coin_flip.tinythinker"


def metrics(model_dir):
  rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "train/loss" in r]


def distil_t5(tiny_student, model_dir, *, steps, fraction=0.0, vocabulary=None, **extra):
  """A 16-wide T5 with its own number of embedding rows (192 vs the teacher's 256)."""
  return phase1.run(
      model_dir=str(model_dir),
      model_config=t5.T5Config(vocab_size=192, emb_dim=16, num_heads=2, head_dim=8,
                               mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                               mlp_activations=("gelu", "linear"),
                               logits_via_embedding=False, dropout_rate=0.0),
      mixture_or_task_name=TASK, task_feature_lengths=STUDENT_LENGTHS,
      settings=recipe.TrainSettings(batch_size=8, train_steps=steps, optimizer="adamw",
                                    learning_rate=3e-3, data_parallelism=1, log_every=1,
                                    checkpoint_every=1000, async_checkpoints=False),
      records_dir=str(tiny_student / "rationales"),
      vocabulary=vocabulary or str(tiny_student / "spm.model"),
      data_dir=str(model_dir.parent / "data"), interleave_interval=10, num_options=2,
      teacher_checkpoint_path=str(tiny_student / "model"),
      distill=distillation.DistillSettings(on_policy_fraction=fraction), progress=False,
      **extra)


def test_t5_student_learns_the_teachers_distribution(tiny_student, tmp_path):
  distil_t5(tiny_student, tmp_path / "offline", steps=30)
  rows = metrics(tmp_path / "offline")
  divergence = [r["train/divergence"] for r in rows]
  assert np.mean(divergence[-5:]) < 0.85 * np.mean(divergence[:5]), divergence
  meta = checkpoints.Checkpointer(tmp_path / "offline" / "checkpoints",
                                  create=False).read_meta(30)
  assert meta["phase"] == "distill" and meta["distill"]["on_policy_fraction"] == 0.0
  assert meta["teacher"].endswith("model")


def test_a_teacher_with_another_tokenizer_stops_the_run(tiny_student, tmp_path):
  records = tiny_student / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  other = vocabularies.train_sentencepiece(
      list(vocabularies.iter_rendered([str(records)], "tinythinker"))[::-1], 80,
      str(tmp_path / "other"), model_type="word", hard_vocab_limit=False)
  with pytest.raises(errors.UserError, match="TEACHER_CHECKPOINT_PATH=.*tokenizer"):
    distil_t5(tiny_student, tmp_path / "other_run", steps=2, vocabulary=other)
  assert not (tmp_path / "other_run" / "checkpoints").exists()


def test_decoder_only_student_on_policy_with_gin_resumes(tiny_student, tmp_path):
  """`tinythinker train --gin_file=runs/distill.gin`: a tiny Llama samples its own
  chains and the T5 teacher scores them; stopped after 2 steps and resumed."""
  model_dir = tmp_path / "llama"
  command = [sys.executable, "-m", "tinythinker_jax.cli.train",
             "--gin_file=models/llama/tiny.gin", "--gin_file=runs/distill.gin",
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
             f"--gin.TASK_FEATURE_LENGTHS={STUDENT_LENGTHS}", "--gin.TRAIN_STEPS=4",
             f"--gin.RECORDS_DIR='{tiny_student / 'rationales'}'",
             f"--gin.VOCABULARY='{tiny_student / 'spm.model'}'",
             f"--gin.TEACHER_CHECKPOINT_PATH='{tiny_student / 'model'}'",
             "--gin.NUM_EMBEDDINGS=192", "--gin.BATCH_SIZE=4", "--gin.OPTIMIZER='adamw'",
             "--gin.INTERLEAVE_INTERVAL=10", "--gin.NUM_OPTIONS=2",
             "--gin.ON_POLICY_FRACTION=1.0", "--gin.DISTILL_BETA=1.0",
             "--gin.ACTIVATION_DTYPE='float32'", "--gin.recipe.TrainSettings.log_every=1"]
  for extra in (["--stop_after=2"], []):
    result = subprocess.run(command + extra, env=one_device_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
  # The second run started at step 2 (its progress bar's first state).
  assert "0/4" not in result.stderr and "2/4" in result.stderr
  rows = metrics(model_dir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(r["train/on_policy"] == 1.0 for r in rows)
  assert compute.read(model_dir).train_steps == 4
  meta = checkpoints.Checkpointer(model_dir / "checkpoints", create=False).read_meta(4)
  assert meta["phase"] == "distill" and meta["model"]["family"] == "decoder_only"


def test_pipeline_adds_a_distilled_student_at_the_same_compute(tiny_student, tmp_path):
  """`DISTILL_TEACHER` in the pipeline: Fine-tune-CoT's student, and the same
  student distilled from the teacher for the FLOPs the first spent; both
  evaluated and reported, and results_table.py pairs them."""
  from benchmarks import results_table
  from tinythinker_jax.stages import pipeline
  run_dir = tmp_path / "run"
  pipeline.run_pipeline(
      run_dir=str(run_dir), dataset="coin_flip", teacher="rule_based",
      model_config=t5.T5Config(vocab_size=192, emb_dim=16, num_heads=2, head_dim=8,
                               mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                               mlp_activations=("gelu", "linear"),
                               logits_via_embedding=False, dropout_rate=0.0),
      student_formats=("finetune_cot",), max_train_examples=64, max_validation_examples=8,
      max_test_examples=8, vocabulary=str(tiny_student / "spm.model"),
      train_settings=recipe.TrainSettings(batch_size=8, train_steps=6, optimizer="adamw",
                                          learning_rate=1e-3, data_parallelism=1,
                                          async_checkpoints=False),
      input_length=96, target_length=32, eval_num_runs=0, rank=None, export=False,
      distill_teacher=str(tiny_student / "model"),
      distill_settings=distillation.DistillSettings(on_policy_fraction=0.5),
      progress=False)
  manifest = json.loads((run_dir / "pipeline.json").read_text())
  assert list(manifest["stages"])[:4] == ["teach", "vocab", "train_finetune_cot",
                                          "distill_finetune_cot"]
  plain = compute.read(run_dir / "students" / "finetune_cot")
  distilled = compute.read(run_dir / "students" / "finetune_cot_distilled")
  # The budget is the plain student's FLOPs: reached within the last step, which
  # costs more than a plain step (the teacher reads every batch).
  per_step = plain.train_flops / plain.train_steps
  assert plain.train_flops <= distilled.train_flops < plain.train_flops + 4 * per_step
  assert distilled.train_steps < plain.train_steps
  assert manifest["settings"]["distill"]["on_policy_fraction"] == 0.5
  report = (run_dir / "report" / "report.md").read_text()
  assert "50% on-policy distillation from" in report
  run = results_table.read_run(str(run_dir))
  assert {"finetune_cot", "finetune_cot_distilled"} <= set(run["students"])
  assert ("finetune_cot_distilled", "finetune_cot") in results_table.COMPARISONS


def test_pipeline_checks_the_teacher_before_any_stage(tiny_student, tmp_path):
  from tinythinker_jax.stages import pipeline
  records = tiny_student / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  other = vocabularies.train_sentencepiece(
      list(vocabularies.iter_rendered([str(records)], "tinythinker"))[::-1], 80,
      str(tmp_path / "other"), model_type="word", hard_vocab_limit=False)
  common = dict(dataset="coin_flip", teacher="rule_based",
                model_config=t5.T5Config(vocab_size=192), student_formats=("finetune_cot",),
                distill_teacher=str(tiny_student / "model"), progress=False)
  with pytest.raises(errors.UserError, match="DISTILL_TEACHER needs the teacher's tokenizer"):
    pipeline.run_pipeline(run_dir=str(tmp_path / "a"), **common)
  with pytest.raises(errors.UserError, match="DISTILL_TEACHER=.*is not the student's"):
    pipeline.run_pipeline(run_dir=str(tmp_path / "b"), vocabulary=other, **common)
  with pytest.raises(errors.UserError, match="PACK=True with ON_POLICY_FRACTION"):
    pipeline.run_pipeline(run_dir=str(tmp_path / "c"), pack=True,
                          vocabulary=str(tiny_student / "spm.model"),
                          **dict(common, distill_settings=distillation.DistillSettings(
                              on_policy_fraction=1.0)))
  assert not any((tmp_path / name / "pipeline.json").exists() for name in "abc")
