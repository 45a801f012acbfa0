"""`tinythinker train` end to end: seqio task -> arrays -> training, as subprocesses.

A SIGKILL mid-run resumes to the same parameters as an uninterrupted run; two
processes with one fake CPU device each (gloo) take the same steps as one
process with two (the mesh is what that test is about; the others run on one device); and a tiny T5 learns a rationale task.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import one_device_env, teach_coin_flip

from tinythinker_jax import decoding
from tinythinker_jax.stages import materialize
from tinythinker_jax.checkpoints import Checkpointer
from tinythinker_jax.data import arrays
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning import answers

TASK = "tinythinker.coin_flip.finetune_cot"
LENGTHS = {"inputs": 40, "targets": 32}
SMALL = ["--gin.t5.T5Config.emb_dim=32", "--gin.t5.T5Config.num_heads=2",
         "--gin.t5.T5Config.head_dim=16", "--gin.t5.T5Config.mlp_dim=64",
         "--gin.t5.T5Config.num_encoder_layers=2", "--gin.t5.T5Config.num_decoder_layers=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Rule-based rationales for coin flip, a word vocabulary, materialised arrays."""
  root = tmp_path_factory.mktemp("coin")
  splits = teach_coin_flip(root, "finetune_cot")
  from tinythinker_jax.tokenizers import vocabularies
  texts = [t for e in splits["train"] for t in (e.question, e.rationale)]
  spm = vocabularies.train_sentencepiece(texts + ["--> yes no"], 128, str(root / "spm"),
                                         model_type="word", hard_vocab_limit=False)
  manifest = materialize.prepare_data(TASK, LENGTHS, str(root / "data"),
                              records_dir=str(root / "rationales"), vocabulary=spm)
  assert manifest["tasks"][TASK] == {"train": 2000, "validation": 300}
  return root, spm


def command(data_dir, model_dir, steps, *extra):
  return [sys.executable, "-m", "tinythinker_jax.cli.train",
          "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/sft.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={steps}",
          f"--gin.phase1.run.data_dir='{data_dir}'", "--gin.NUM_EMBEDDINGS=256",
          "--gin.ACTIVATION_DTYPE='float32'", "--gin.OPTIMIZER='adamw'",
          "--gin.SCHEDULE='cosine'", "--gin.LEARNING_RATE=2e-3", "--gin.WARMUP_STEPS=5",
          "--gin.recipe.TrainSettings.log_every=1", *extra]


def env(devices, fast_compile=True):
  return one_device_env(devices, fast_compile)


def train_ok(cmd, devices, fast_compile=True):
  """Runs `tinythinker train` to completion and checks that it succeeded."""
  result = subprocess.run(cmd, env=env(devices, fast_compile), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]


def final_params(model_dir, step):
  checkpointer = Checkpointer(os.path.join(model_dir, "checkpoints"), create=False)
  try:
    return checkpointer.restore_params(step)
  finally:
    checkpointer.close()


def losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_sigkill_mid_training_resumes_exactly(data, tmp_path):
  root, _ = data
  extra = SMALL + ["--gin.DROPOUT_RATE=0.1", "--gin.BATCH_SIZE=16",
                   "--gin.recipe.TrainSettings.checkpoint_every=10",
                   "--gin.recipe.TrainSettings.eval_every=0"]
  straight = tmp_path / "straight"
  train_ok(command(root / "data", straight, 30, *extra), 1)

  killed = tmp_path / "killed"
  process = subprocess.Popen(command(root / "data", killed, 30, *extra), env=env(1),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not (killed / "checkpoints" / "10").exists():
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / "checkpoints" / "30").exists()
  train_ok(command(root / "data", killed, 30, *extra), 1)
  a, b = final_params(straight, 30), final_params(killed, 30)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a, b)
  assert "phase1.run" in (killed / "config.gin").read_text()


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_take_the_same_steps_as_one(data, tmp_path):
  root, _ = data
  extra = SMALL + ["--gin.DROPOUT_RATE=0.0", "--gin.BATCH_SIZE=16",
                   "--gin.recipe.TrainSettings.checkpoint_every=100",
                   "--gin.recipe.TrainSettings.eval_every=0"]
  one = tmp_path / "one"
  train_ok(command(root / "data", one, 8, *extra), 2)
  two = tmp_path / "two"
  address = f"127.0.0.1:{free_port()}"
  workers = [subprocess.Popen(
      command(root / "data", two, 8, *extra, f"--gin.COORDINATOR_ADDRESS='{address}'",
              "--gin.NUM_PROCESSES=2", f"--gin.PROCESS_ID={i}"),
      env=env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [w.communicate(timeout=600) for w in workers]
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  single, multi = losses(one), losses(two)
  assert sorted(single) == sorted(multi) == list(range(1, 9))
  np.testing.assert_allclose([multi[s] for s in range(1, 9)],
                             [single[s] for s in range(1, 9)], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
               final_params(two, 8), final_params(one, 8))


# The demo's student: 64-wide, 2+2 layers.
LEARNER = dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=256, num_encoder_layers=2,
               num_decoder_layers=2)


def test_tiny_t5_learns_a_rationale_task(data, tmp_path):
  root, spm = data
  model_dir = tmp_path / "learn"
  train_ok(command(root / "data", model_dir, 200, "--gin.DROPOUT_RATE=0.0",
                   *[f"--gin.t5.T5Config.{k}={v}" for k, v in LEARNER.items()],
                   "--gin.LEARNING_RATE=3e-3",
                   "--gin.BATCH_SIZE=32", "--gin.recipe.TrainSettings.checkpoint_every=200",
                   "--gin.recipe.TrainSettings.eval_every=100",
                   "--gin.recipe.TrainSettings.eval_batches=4"), 1, fast_compile=False)
  with open(model_dir / "metrics.jsonl") as f:
    evals = [json.loads(l) for l in f if "eval/" in l]
  key = f"eval/{TASK}/loss"
  assert evals[0]["step"] == 0 and evals[-1]["step"] == 200
  assert evals[-1][key] < 0.25 * evals[0][key]

  # Greedy answers on held-out questions, decoded with the KV cache.
  config = t5.T5Config(vocab_size=256, mlp_activations=("gelu", "linear"),
                       logits_via_embedding=False, dropout_rate=0.0, **LEARNER)
  params = final_params(model_dir, 200)
  validation = arrays.ArrayDataset(str(root / "data" / TASK / "validation"))
  enc = np.asarray(validation.arrays["encoder_input_tokens"][:128])
  gold = np.asarray(validation.arrays["decoder_target_tokens"][:128])
  out = jax.jit(lambda p, e: decoding.greedy_decode(t5.T5(config), p, e,
                                                    max_length=32))(params, enc)
  import sentencepiece
  processor = sentencepiece.SentencePieceProcessor(model_file=spm)
  decode = lambda ids: processor.decode([int(i) for i in ids if 1 < i < 50])  # noqa: E731
  predicted = [answers.extract_answer(decode(t), AnswerType.YES_NO) for t in out.tokens]
  expected = [answers.extract_answer(decode(t), AnswerType.YES_NO) for t in gold]
  accuracy = np.mean([p == e for p, e in zip(predicted, expected)])
  assert accuracy >= 0.8, (accuracy, decode(out.tokens[0]), decode(gold[0]))
