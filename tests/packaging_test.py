"""The wheel is complete: built here, installed into a fresh venv away from the
source tree, it resolves and parses the shipped gin configs."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

from tests.conftest import REPO_ROOT


def test_wheel_installs_into_a_fresh_venv_and_finds_its_gin_configs(tmp_path):
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), str(REPO_ROOT)],
                 check=True, capture_output=True, timeout=600)
  (wheel,) = dist.glob("tinythinker_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for name in ("tinythinker_jax/gin_configs/runs/sft.gin",
               "tinythinker_jax/gin_configs/runs/demo.gin",
               "tinythinker_jax/gin_configs/models/t5_1_1/tiny.gin",
               "tinythinker_jax/gin_configs/experiments/coin_flip_tinythinker.gin",
               "tasks/__init__.py"):
    assert name in names, name

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
  assert batch_size == "64" and run_dir == "demo_output"
