"""Test set-up: 8 fake CPU devices (set before jax is imported), tiny configs, a
persistent compilation cache shared with the tests' subprocesses, and one tiny
TinyThinker student trained once per session for the tests that need a model.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compilation cache for the session, this process and every subprocess it
# starts (they compile the same tiny programs). A fresh folder per session keeps
# the suite's durations honest; set TINYTHINKER_TEST_JAX_CACHE to keep one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ.get(
    "TINYTHINKER_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="tinythinker_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The session student's architecture (tests rebuild it to recompute by hand).
STUDENT_CONFIG = dict(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                      num_encoder_layers=2, num_decoder_layers=2,
                      mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                      dropout_rate=0.0)
STUDENT_LENGTHS = {"inputs": 96, "targets": 32}


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running; `make test-all` runs them")


def one_device_env(devices: int = 1) -> dict:
  """The environment for a subprocess on `devices` fake CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@pytest.fixture
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} (the project's shared test data) is not present")
  return SHARED_DATA


def make_tiny_config():
  """A 2+2-layer, 32-wide T5 v1.1 with a 128-token vocabulary."""
  from tinythinker_jax.models import t5
  return t5.T5Config(vocab_size=128, emb_dim=32, num_heads=8, head_dim=4, mlp_dim=64,
                     num_encoder_layers=2, num_decoder_layers=2,
                     mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                     dropout_rate=0.0, relative_attention_num_buckets=8,
                     relative_attention_max_distance=16)


@pytest.fixture
def tiny_config():
  return make_tiny_config()


def teach_coin_flip(root: pathlib.Path, method: str) -> dict:
  """Rule-based rationales for Coin Flip's train and validation splits under
  `root/rationales/coin_flip/<method>/<split>/`; returns the splits."""
  from tinythinker_jax.data import datasets
  from tinythinker_jax.data.schema import AnswerType
  from tinythinker_jax.teacher import pipelines
  splits = datasets.load_dataset("coin_flip", seed=0)
  for split in ("train", "validation"):
    pipelines.teach(splits[split], method=pipelines.Method(method),
                    answer_type=AnswerType.YES_NO,
                    output_dir=str(root / "rationales" / "coin_flip" / method / split),
                    teacher=None, progress=False)
  return splits


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> pathlib.Path:
  """A run folder with rule-based TinyThinker rationales for Coin Flip
  (`rationales/`), a word vocabulary (`spm.model`) and a briefly trained tiny T5
  (`model/`), trained in this process on one device. It is half-trained on
  purpose: its chains are right and wrong, as phase 2 needs."""
  from tinythinker_jax import train, vocabularies
  from tinythinker_jax.models import t5
  from tinythinker_jax.training import recipe
  root = tmp_path_factory.mktemp("tiny_student")
  teach_coin_flip(root, "tinythinker")
  records = root / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  vocab = vocabularies.train_sentencepiece(
      vocabularies.iter_rendered([str(records)], "tinythinker"), 64, str(root / "spm"),
      model_type="word", hard_vocab_limit=False)
  train.run(model_dir=str(root / "model"), model_config=t5.T5Config(**STUDENT_CONFIG),
            mixture_or_task_name="tinythinker.coin_flip.tinythinker",
            task_feature_lengths=STUDENT_LENGTHS,
            settings=recipe.TrainSettings(
                batch_size=16, train_steps=200, optimizer="adamw", schedule="cosine",
                learning_rate=2e-3, warmup_steps=50, data_parallelism=1,
                checkpoint_every=200, async_checkpoints=False),
            records_dir=str(root / "rationales"), vocabulary=vocab,
            interleave_interval=10, num_options=2, progress=False)
  return root
