"""Test set-up: 8 fake CPU devices (set before jax is imported), tiny configs, a
persistent compilation cache shared with the tests' subprocesses, and one tiny
TinyThinker student trained once per session for the tests that need a model.
"""

import os
import tempfile

# The suite's programs are tiny, so compiling them is most of its time: LLVM
# at -O0 compiles about a third faster (the numbers are checked at the same
# tolerances; nothing here is timed).
TEST_XLA_FLAGS = os.environ.get("TINYTHINKER_TEST_XLA_FLAGS",
                                "--xla_backend_optimization_level=0")
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
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

import functools  # noqa: E402
import pathlib  # noqa: E402

import filelock  # noqa: E402
import numpy as np  # noqa: E402
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


# The longest files first: `make test` hands whole files to its workers in
# collection order, so this keeps one long file from running alone at the end.
# seeds_test waits for the session student that reflect_test builds.
LONGEST_FIRST = ("reflect_test", "train_cli_test", "pipeline_test", "trainer_test",
                 "scan_test", "local_teacher_test", "partitioning_test", "student_test",
                 "seeds_test", "packing_test", "remote_storage_test", "dpo_test")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable: the order within a file is kept


def one_device_env(devices: int = 1, fast_compile: bool = True) -> dict:
  """The environment for a subprocess on `devices` fake CPU devices; runs that
  train for hundreds of steps run faster with XLA's optimised code
  (`fast_compile=False`)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" + (
      f" {TEST_XLA_FLAGS}" if fast_compile else "")
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


@functools.lru_cache(maxsize=None)
def jitted_forward(config):
  """`T5(config).apply` under `jax.jit`: test references run whole programs, not
  op by op (eager dispatch compiles every op anew for each input shape)."""
  import jax
  from tinythinker_jax.models import t5
  return jax.jit(lambda params, enc, dec: t5.T5(config).apply({"params": params}, enc, dec))


def init_params(config, seed: int = 0):
  """Unboxed T5 parameters from `key(seed)`, initialised under `jax.jit`."""
  import flax.linen as nn
  import jax
  from tinythinker_jax.models import t5
  return jax.jit(lambda r: nn.unbox(t5.init_params(config, r)))(jax.random.key(seed))


def teacher_forced_logps(config, params, prompt_ids, target_ids, bucket=64):
  """log p(target_ids[t] | prompt_ids, target_ids[:t]) for each t, from one
  teacher-forced forward pass and a float64 log-softmax written out by hand.
  Inputs are zero-padded to a multiple of `bucket` (fewer shapes to compile): T5
  masks encoder padding, and the decoder is causal, so padding changes nothing."""
  def pad(ids):
    return np.array([list(ids) + [0] * (-len(ids) % bucket)], np.int32)
  logits = np.asarray(jitted_forward(config)(params, pad(prompt_ids),
                                             pad([0] + list(target_ids[:-1]))),
                      np.float64)[0]
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return [float(logp[i, t]) for i, t in enumerate(target_ids)]


def full_and_microbatched(model, optimizer, params, batch, microbatches: int = 2):
  """One train step of `model` on `batch`, whole and in `microbatches`, from the
  same fresh state: `(whole_step_fn, (state, metrics), (state, metrics))`."""
  import jax
  from tinythinker_jax.training import step as step_lib
  state = step_lib.TrainState.create(params, optimizer)
  whole = jax.jit(step_lib.make_train_step(model, optimizer))
  micro = jax.jit(step_lib.make_train_step(model, optimizer, num_microbatches=microbatches))
  return (whole, whole(state, batch, jax.random.key(0)),
          micro(state, batch, jax.random.key(0)))


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
  # Under pytest-xdist every worker asks for it: the first builds it in the
  # run's shared temporary folder, under a file lock; the others wait and reuse it.
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # the run's folder, above each worker's own
  root = shared / "tiny_student"
  with filelock.FileLock(str(shared / "tiny_student.lock")):
    if not (root / "done").exists():
      _train_tiny_student(root)
      (root / "done").write_text("")
  return root


def _train_tiny_student(root: pathlib.Path) -> None:
  from tinythinker_jax.tokenizers import vocabularies
  from tinythinker_jax.stages import phase1
  from tinythinker_jax.models import t5
  from tinythinker_jax.training import recipe
  root.mkdir(parents=True, exist_ok=True)
  teach_coin_flip(root, "tinythinker")
  records = root / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  vocab = vocabularies.train_sentencepiece(
      vocabularies.iter_rendered([str(records)], "tinythinker"), 64, str(root / "spm"),
      model_type="word", hard_vocab_limit=False)
  phase1.run(model_dir=str(root / "model"), model_config=t5.T5Config(**STUDENT_CONFIG),
            mixture_or_task_name="tinythinker.coin_flip.tinythinker",
            task_feature_lengths=STUDENT_LENGTHS,
            settings=recipe.TrainSettings(
                batch_size=16, train_steps=200, optimizer="adamw", schedule="cosine",
                learning_rate=2e-3, warmup_steps=50, data_parallelism=1,
                checkpoint_every=200, async_checkpoints=False),
            records_dir=str(root / "rationales"), vocabulary=vocab,
            interleave_interval=10, num_options=2, progress=False)


def staggered_chooser(rows: int, sampled: bool):
  """A decode loop's `choose(step, logits, rows)` under which row r ends (EOS, id
  1) at its own step (most rows early, every seventh late), so a loop's rows
  finish at very different times; greedy or sampled otherwise, never padding.
  Returns (choose, the stopping steps)."""
  import jax
  import jax.numpy as jnp

  from tinythinker_jax import decoding
  index = np.arange(rows)
  stops = jnp.asarray(np.where(index % 7 == 0, 9 + index % 3, index % 4))
  sample = decoding.sample_chooser(jax.random.key(1), rows, 1, temperature=1.0, top_k=0,
                                   top_p=1.0)

  def choose(step, logits, which):
    token = sample(step, logits, which) if sampled else jnp.argmax(logits, -1)
    token = jnp.where(token <= 1, 2, token)
    return jnp.where(step == stops[which], 1, token).astype(jnp.int32)
  return choose, stops
