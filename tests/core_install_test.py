"""The accelerator install path has no TensorFlow: a core install (no `seqio`
extra) trains, samples and evaluates from arrays materialised elsewhere.

The binaries run in a process where TensorFlow, seqio and their kin cannot be
imported (`sys.modules[name] = None`: ModuleNotFoundError, as for a missing
package). packaging_test (slow) installs the wheel's core requirements alone
into a fresh venv and checks that TensorFlow is not among them.
"""

import json
import pathlib
import subprocess
import sys

from tests.conftest import STUDENT_CONFIG, STUDENT_LENGTHS, one_device_env

BLOCK = """
import sys
BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio", "clu",
           "t5", "mesh_tensorflow")
# Python's own marker for a module that cannot be imported: `import` raises
# ModuleNotFoundError and importlib.util.find_spec answers None, as for a
# package that is not installed.
for name in BLOCKED:
  sys.modules[name] = None
"""

RUN = """
import gin, importlib.util, json, sys
for name in BLOCKED:  # the marker works as a missing package does
  assert importlib.util.find_spec(name) is None, name
  try:
    __import__(name)
    sys.exit(f"{name} imported")
  except ModuleNotFoundError:
    pass
from tinythinker_jax.cli import main
for argv in json.loads(sys.argv[1]):
  code = main.main(argv)
  gin.clear_config()
  if code:
    sys.exit(f"{argv[0]} exited {code}")
print("DONE")
"""


def commands(student: pathlib.Path, out: pathlib.Path) -> list[list[str]]:
  model = [f"--gin.t5.T5Config.{k}={v!r}" for k, v in STUDENT_CONFIG.items()
           if k != "vocab_size"]
  records = student / "rationales" / "coin_flip" / "tinythinker" / "train" / "records.jsonl"
  return [
      ["train", "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/sft.gin", *model,
       f"--gin.MODEL_DIR='{out / 'model'}'",
       "--gin.MIXTURE_OR_TASK_NAME='tinythinker.coin_flip.tinythinker'",
       f"--gin.TASK_FEATURE_LENGTHS={STUDENT_LENGTHS}",
       f"--gin.phase1.run.data_dir='{student / 'model' / 'data'}'",
       f"--gin.INITIAL_CHECKPOINT_PATH='{student / 'model'}'",
       f"--gin.VOCABULARY='{student / 'spm.model'}'",
       f"--gin.NUM_EMBEDDINGS={STUDENT_CONFIG['vocab_size']}",
       "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.OPTIMIZER='adamw'",
       "--gin.EVAL_EVERY=0", "--gin.REQUIRED_PLATFORM='cpu'"],
      ["evaluate", f"--gin.MODEL_DIR='{out / 'model'}'", "--gin.DATASET='coin_flip'",
       "--gin.SPLIT='validation'", f"--gin.OUTPUT_DIR='{out / 'eval'}'",
       "--gin.MAX_EXAMPLES=4", "--gin.NUM_RUNS=0", "--gin.REQUIRED_PLATFORM='cpu'",
       "--gin.student.StudentSettings.max_input_length=96",
       "--gin.student.StudentSettings.max_decode_length=32"],
      ["sample", f"--gin.MODEL_DIR='{out / 'model'}'", f"--gin.RECORDS_PATH='{records}'",
       f"--gin.OUTPUT_DIR='{out / 'sample'}'", "--gin.MAX_EXAMPLES=2",
       "--gin.INPUT_LENGTH=96", "--gin.TARGET_LENGTH=32",
       "--gin.sample.SampleSettings.num_recall_samples=2",
       "--gin.sample.SampleSettings.num_analyze_samples=2"],
  ]


def test_train_sample_and_evaluate_without_tensorflow(tiny_student, tmp_path):
  result = subprocess.run(
      [sys.executable, "-c", BLOCK + RUN, json.dumps(commands(tiny_student, tmp_path))],
      cwd=tmp_path, env={k: v for k, v in one_device_env().items()
                         if not k.startswith("TINYTHINKER_")},
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  # Nothing reached for TensorFlow or seqio (either would have failed the
  # command), and the work happened: two steps from the session student's checkpoint, a
  # report over four validation questions, and sampled preference data.
  assert "step 2:" in result.stdout and "DONE" in result.stdout
  assert "platform: backend=cpu" in result.stderr
  report = json.loads((tmp_path / "eval" / "report.json").read_text())
  assert report["greedy"]["num_examples"] == 4
  summary = json.loads((tmp_path / "sample" / "summary.json").read_text())
  assert summary["questions"] == 2 and (tmp_path / "sample" / "pairs.jsonl").exists()
