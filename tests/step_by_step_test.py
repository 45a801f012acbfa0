"""Distilling Step-by-Step for a T5 student: teaching keeps every chain under the gold
label, phase 1 trains both tasks in every batch (the same questions' predict and
explain rows), and evaluation decodes the `predict:` task only."""

import json

import numpy as np

from tinythinker_jax import student as student_lib
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import arrays, datasets
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import chains, formats
from tinythinker_jax.stages import phase1
from tinythinker_jax.teacher import pipelines, rule_based
from tinythinker_jax.training import recipe

TASK = "tinythinker.coin_flip.step_by_step"


def test_t5_step_by_step_teaches_trains_both_tasks_and_predicts(tmp_path):
  splits = datasets.load_dataset("coin_flip", seed=0)
  noisy = rule_based.RuleBasedSettings(answer_error_rate=0.3)
  for split, count in (("train", 96), ("validation", 16)):
    summary = pipelines.teach(
        splits[split][:count], method=pipelines.Method.STEP_BY_STEP,
        answer_type=AnswerType.YES_NO,
        output_dir=str(tmp_path / "rationales" / "coin_flip" / "step_by_step" / split),
        teacher=None, rule_based_settings=noisy, progress=False)
    # Every chain is kept, wrong answers included (the teacher's accuracy below 1).
    assert summary.kept == count and summary.teacher_accuracy < 1
  records = [json.loads(l) for l in (tmp_path / "rationales" / "coin_flip" / "step_by_step" /
                                     "train" / "records.jsonl").read_text().splitlines()]
  assert all(r["answer"] == r["example"]["answer"] for r in records)  # the gold label
  assert any(r["teacher_answer"] != r["answer"] for r in records)
  texts = [t for r in records for pair in formats.step_by_step(
      datasets.Example.from_json(r["example"]), r["rationale"]).values()
           for t in (pair.inputs, pair.targets)]
  spm = vocabularies.train_sentencepiece(texts, 128, str(tmp_path / "spm"),
                                         model_type="word", hard_vocab_limit=False)
  config = t5.T5Config(vocab_size=160, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                       dtype="float32")
  model_dir = tmp_path / "student"
  result = phase1.run(
      model_dir=str(model_dir), model_config=config, mixture_or_task_name=TASK,
      task_feature_lengths={"inputs": 64, "targets": 48},
      settings=recipe.TrainSettings(batch_size=16, train_steps=24, learning_rate=3e-3,
                                    optimizer="adamw", schedule="constant",
                                    warmup_steps=0, checkpoint_every=24, log_every=1),
      records_dir=str(tmp_path / "rationales"), vocabulary=spm, progress=False,
      task_weights={"predict": 0.7, "explain": 0.3})
  data = model_dir / "data"
  predict = arrays.ArrayDataset(data / f"{TASK}.predict" / "train")
  explain = arrays.ArrayDataset(data / f"{TASK}.explain" / "train")
  assert predict.num_examples == explain.num_examples == 96
  losses = [json.loads(l)["train/loss"] for l in (model_dir / "metrics.jsonl").read_text()
            .splitlines() if "train/loss" in l]
  assert losses[-1] < losses[0], (losses[0], losses[-1])
  assert result.last_metrics is not None
  # Inference: the predict task alone, read as the answer itself.
  student = student_lib.Student.from_path(str(model_dir / "checkpoints" / "24"),
                                          vocabulary=spm, batch_size=16,
                                          max_input_length=64, max_decode_length=8)
  examples = splits["test"][:16]
  seen = []

  def generate(prompts, sampling, seed):
    seen.extend(prompts)
    return student.generate(prompts, sampling, seed)
  runs = chains.run_chains(examples, generate, fmt=formats.Format.STEP_BY_STEP,
                           answer_type=AnswerType.YES_NO)
  assert seen == [formats.step_by_step_prompt(e) for e in examples]
  assert all(p.startswith("predict: ") for p in seen)
  parsed = [r[0].answer for r in runs]
  assert np.mean([a in ("yes", "no") for a in parsed]) >= 0.5, [r[0].text for r in runs]
