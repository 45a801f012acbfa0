"""The wheel is complete: built here, installed into a fresh venv away from the
source tree, it resolves and parses the shipped gin configs; it declares the
accelerator extras; its core requirements install without TensorFlow."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.conftest import REPO_ROOT, one_device_env


# The demo at its smallest: what is tested is that an installed wheel runs it (every
# stage: teach, vocab, phase 1, self-reflection, both baselines, evaluation, export,
# report); one student format is enough for that (tests/pipeline_test.py runs them all).
TINY_DEMO = ["--gin.STUDENT_FORMATS=('tinythinker',)",
             "--gin.phase1/recipe.TrainSettings.train_steps=8",
             "--gin.phase1/recipe.TrainSettings.eval_every=8",
             "--gin.phase1/recipe.TrainSettings.batch_size=8",
             "--gin.phase1/recipe.TrainSettings.warmup_steps=2",
             "--gin.t5.T5Config.emb_dim=16", "--gin.t5.T5Config.num_heads=2",
             "--gin.t5.T5Config.head_dim=8", "--gin.t5.T5Config.mlp_dim=32",
             "--gin.t5.T5Config.num_encoder_layers=1",
             "--gin.t5.T5Config.num_decoder_layers=1",
             "--gin.MAX_TRAIN_EXAMPLES=24", "--gin.MAX_TEST_EXAMPLES=4",
             "--gin.EVAL_NUM_RUNS=0", "--gin.MAX_VALIDATION_EXAMPLES=4",
             "--gin.pipeline.run_pipeline.max_reflect_examples=4",
             "--gin.sample.SampleSettings.num_recall_samples=2",
             "--gin.dpo/recipe.TrainSettings.num_epochs=None",
             "--gin.dpo/recipe.TrainSettings.train_steps=1",
             "--gin.dpo/recipe.TrainSettings.batch_size=4"]


def build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
  # From a clean copy of the sources: setuptools reuses an in-tree `build/`, which
  # would carry modules a later change removed into the wheel.
  # Run folders (checkpoints, gigabytes in a working checkout) are not sources.
  source = tmp_path / "source"
  patterns = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                    "__pycache__", "demo_output", "bench_out")

  def ignore(folder, names):
    top = pathlib.Path(folder) == REPO_ROOT
    return set(patterns(folder, names)) | ({"runs"} & set(names) if top else set())
  shutil.copytree(REPO_ROOT, source, ignore=ignore)
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), str(source)],
                 check=True, capture_output=True, timeout=600)
  (wheel,) = dist.glob("tinythinker_jax-*.whl")
  return wheel


def test_wheel_installs_into_a_fresh_venv_and_finds_its_gin_configs(tmp_path):
  wheel = build_wheel(tmp_path)
  metadata = zipfile.ZipFile(wheel).read(
      next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode()
  # The accelerator extras, through JAX's own (which pin the plugin to jax's version).
  for extra in ("cuda12", "cuda13", "tpu"):
    assert f"Provides-Extra: {extra}" in metadata
    assert f'Requires-Dist: jax[{extra}]<0.11,>=0.10.2; extra == "{extra}"' in metadata
  core = [line for line in metadata.splitlines()
          if line.startswith("Requires-Dist:") and "extra ==" not in line]
  assert not [line for line in core if "tensorflow" in line or "seqio" in line], core
  names = set(zipfile.ZipFile(wheel).namelist())
  # Every gin file of the top-level gin_configs/ ships, as package data; the seqio
  # tasks ship as tinythinker_jax.tasks (the checkout's `tasks/` is not installed).
  shipped = {f"tinythinker_jax/gin_configs/{p.relative_to(REPO_ROOT / 'gin_configs')}"
             for p in (REPO_ROOT / "gin_configs").rglob("*.gin")}
  assert len(shipped) > 30 and shipped <= names, sorted(shipped - names)
  assert "tinythinker_jax/tasks.py" in names
  assert not [n for n in names if n.startswith("tasks/")]

  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = venv / "bin" / "python"
  subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
  # The dependencies come from this environment's site-packages (on PYTHONPATH,
  # where the editable install's path hook is not active); the package itself
  # only from the fresh venv.
  env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
  script = """
import gin, tinythinker_jax
from tinythinker_jax import gin_utils
print(tinythinker_jax.__file__)
gin_utils.parse(["models/t5_1_1/tiny.gin", "runs/sft.gin"],
                ["MODEL_DIR = '/tmp/m'", "MIXTURE_OR_TASK_NAME = 'x'", "TRAIN_STEPS = 1",
                 "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}"])
print(gin_utils.query("BATCH_SIZE"))
gin.clear_config()
gin_utils.parse(["runs/demo.gin"])
print(gin_utils.query("RUN_DIR"))
"""
  empty = tmp_path / "elsewhere"
  empty.mkdir()
  result = subprocess.run([str(python), "-c", script], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  location, batch_size, run_dir = result.stdout.split()[-3:]
  assert pathlib.Path(location).is_relative_to(venv), location
  assert not (empty / "gin_configs").exists()
  # `tinythinker demo` from the installed wheel, with a tiny student and data.
  demo = subprocess.run(
      [str(venv / "bin" / "tinythinker"), "demo", "--output_dir=demo_run",
       *TINY_DEMO], cwd=empty, env=dict(one_device_env(), PYTHONPATH=env["PYTHONPATH"]),
      capture_output=True, text=True, timeout=900)
  assert demo.returncode == 0, demo.stderr[-3000:]
  assert (empty / "demo_run" / "report" / "report.md").exists()
  assert (empty / "demo_run" / "export" / "hf_model" / "model.safetensors").exists()

  assert batch_size == "64" and run_dir == "demo_output"


@pytest.mark.slow
def test_a_fresh_core_install_has_no_tensorflow(tmp_path):
  """`pip install <wheel>` with the exact pins, no extras, into a new venv (from the
  package index: slow, and it needs the network)."""
  wheel = build_wheel(tmp_path)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = str(venv / "bin" / "python")
  install = subprocess.run([python, "-m", "pip", "install", "--quiet", "-c",
                            str(REPO_ROOT / "constraints.txt"), str(wheel)],
                           capture_output=True, text=True, timeout=1800)
  assert install.returncode == 0, install.stderr[-3000:]
  check = subprocess.run(
      [python, "-c", "import importlib.util as u, json; import tinythinker_jax.cli.train, "
       "tinythinker_jax.cli.evaluate, tinythinker_jax.cli.sample; print(json.dumps([m for m in "
       "('tensorflow', 'seqio', 'torch') if u.find_spec(m)]))"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert check.returncode == 0, check.stderr[-3000:]
  assert json.loads(check.stdout.strip().splitlines()[-1]) == []


# What an accelerator host brings (JAX and its own dependencies, the ML stack) and
# what the package only imports when asked (report plots, TensorBoard event files).
HOST_HAS = {"jax", "jaxlib", "numpy", "scipy", "ml-dtypes", "opt-einsum", "sentencepiece",
            "safetensors", "packaging", "setuptools", "markupsafe"}
OPTIONAL = {"matplotlib", "tensorboard"}


def test_the_wheelhouse_carries_every_runtime_dependency():
  """`make wheelhouse` (for accelerator hosts without network) lists the whole
  closure of the core requirements, less what such a host has and the optional."""
  import importlib.metadata as md
  import re
  from packaging.requirements import Requirement
  host = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "extra": ""}

  def requirements(dist):
    """A distribution's requirements on such a host (markers evaluated)."""
    for text in md.distribution(dist).requires or ():
      req = Requirement(text)
      if req.marker is None or req.marker.evaluate(host):
        yield norm(req.name)
  makefile = (REPO_ROOT / "Makefile").read_text()
  listed = re.search(r"HOST_WHEELS := (.*?)\n\S", makefile, re.S).group(1)
  norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
  listed = {norm(n) for n in listed.replace("\\", " ").split()}
  core = list(requirements("tinythinker_jax"))
  needed, stack = set(), [n for n in core if n not in OPTIONAL]
  while stack:
    name = stack.pop()
    if name in needed or name in HOST_HAS or name in OPTIONAL:
      continue
    needed.add(name)
    try:
      stack += list(requirements(name))
    except md.PackageNotFoundError:
      continue
  assert needed - listed == set(), sorted(needed - listed)
