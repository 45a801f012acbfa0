"""The `tinythinker` command: verbs, gin errors, the demo."""

import json
import subprocess
import sys

import pytest

from tinythinker_jax import errors, gin_utils
from tinythinker_jax.cli import main

DESIGN_VERBS = ("teach", "train", "sample", "evaluate", "infer", "score", "export",
                "pipeline", "demo", "vocab", "data")


def run_cli(*args, module="tinythinker_jax.cli.main"):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, timeout=600)


def test_help_lists_every_design_verb():
  result = run_cli("--help")
  assert result.returncode == 0
  for verb in DESIGN_VERBS:
    assert verb in result.stdout
  assert set(DESIGN_VERBS) <= set(main.VERBS)
  # The first lines say what the project distils into: every student family.
  for family in ("T5", "Llama", "GPT-2"):
    assert family in result.stdout.splitlines()[2], result.stdout.splitlines()[2]


def test_required_gin_macros_are_named():
  result = run_cli("evaluate", "--gin.DATASET='coin_flip'", "--gin.OUTPUT_DIR='/tmp/x'")
  assert result.returncode == 2
  assert "MODEL_DIR" in result.stderr


def test_gin_flag_rewriting():
  rest, bindings = gin_utils.rewrite_gin_args(
      ["demo", "--gin.MODEL_DIR='/tmp/x'", "--gin.pipeline.run_pipeline.split_seed=3",
       "--output_dir=x"])
  assert rest == ["demo", "--output_dir=x"]
  assert bindings == ["MODEL_DIR = '/tmp/x'", "pipeline.run_pipeline.split_seed = 3"]


def test_misspelt_gin_binding_fails_naming_it(tmp_path):
  result = run_cli("demo", f"--output_dir={tmp_path}", "--gin.pipeline.run_pipeline.stepz=3")
  assert result.returncode == 2
  assert "stepz" in result.stderr and "Traceback" not in result.stderr


def test_data_verb_describes_a_dataset(shared_data):
  result = run_cli("--dataset=obqa", f"--path={shared_data / 'tinythinker' / 'obqa'}",
                   module="tinythinker_jax.cli.data")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "train        4957 examples" in result.stdout
  assert "TinyThinker recall input" in result.stdout
  listing = run_cli("data", "--list")
  assert "finetune_cot/commonsense_qa" in listing.stdout


def test_teach_verb_with_the_rule_based_teacher(tmp_path):
  result = run_cli("teach", "--gin.DATASET='coin_flip'", f"--gin.OUTPUT_DIR='{tmp_path}'",
                   "--gin.TEACHER='rule_based'", "--gin.MAX_EXAMPLES=10")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["kept"] == 10 and "rule-based" in summary["teacher"]
  assert "teach.teach_dataset" in (tmp_path / "config.gin").read_text()
  missing = run_cli("teach", f"--gin.OUTPUT_DIR='{tmp_path}'")
  assert missing.returncode == 2 and "DATASET" in missing.stderr


def test_user_errors_exit_2_in_one_line_and_bugs_keep_their_traceback(capsys):
  def bad_input(args, bindings):
    raise errors.UserError("data.jsonl:3: no 'question' key")

  def bug(args, bindings):
    raise KeyError("internal")

  assert gin_utils.run("tinythinker x", lambda p: None, bad_input, []) == 2
  assert capsys.readouterr().err == "tinythinker x: data.jsonl:3: no 'question' key\n"
  with pytest.raises(KeyError, match="internal"):
    gin_utils.run("tinythinker x", lambda p: None, bug, [])
  # A subprocess shows the traceback of a bug, not a one-line message.
  result = run_cli("score", "--model_dir=/nonexistent", "--input=a", "--target=b")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "/nonexistent" in result.stderr


def test_every_verb_module_runs_as_a_module_and_main_only_dispatches():
  import importlib
  import pathlib
  for verb, (module, _) in main.BINARIES.items():
    assert module == verb  # cli/<verb>.py
    binary = importlib.import_module(f"tinythinker_jax.cli.{module}")
    assert callable(binary.main), verb
  # The verbs' room holds the verbs and nothing else.
  room = pathlib.Path(main.__file__).parent
  assert {p.stem for p in room.glob("*.py")} - {"__init__", "main"} == set(main.BINARIES)
  result = run_cli("--help", module="tinythinker_jax.cli.evaluate")
  assert result.returncode == 0 and "--gin_file" in result.stdout
  # `python -m tinythinker_jax VERB` is the `tinythinker` command.
  result = run_cli("evaluate", "--help", module="tinythinker_jax")
  assert result.returncode == 0 and "--gin_file" in result.stdout
