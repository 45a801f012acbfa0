"""The `tinythinker` command: verbs, planned verbs, gin errors, the demo."""

import json
import subprocess
import sys

import pytest

from tinythinker_jax import main

DESIGN_VERBS = ("teach", "train", "sample", "evaluate", "infer", "score", "export",
                "pipeline", "demo", "vocab", "data")


def run_cli(*args, module="tinythinker_jax.main"):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, timeout=600)


def test_help_lists_every_design_verb():
  result = run_cli("--help")
  assert result.returncode == 0
  for verb in DESIGN_VERBS:
    assert verb in result.stdout
  assert set(DESIGN_VERBS) <= set(main.VERBS)


@pytest.mark.parametrize("verb,issue", [("export", 6), ("pipeline", 6)])
def test_planned_verbs_say_which_issue_brings_them(verb, issue):
  result = run_cli(module=f"tinythinker_jax.{verb}")
  assert result.returncode == 2
  assert f"not built yet; issue #{issue} brings it" in result.stderr


def test_required_gin_macros_are_named():
  result = run_cli("evaluate", "--gin.DATASET='coin_flip'", "--gin.OUTPUT_DIR='/tmp/x'")
  assert result.returncode == 2
  assert "MODEL_DIR" in result.stderr


def test_gin_flag_rewriting():
  rest, bindings = main.gin_utils.rewrite_gin_args(
      ["demo", "--gin.MODEL_DIR='/tmp/x'", "--gin.foundation_demo.run.seed=3", "--steps=2"])
  assert rest == ["demo", "--steps=2"]
  assert bindings == ["MODEL_DIR = '/tmp/x'", "foundation_demo.run.seed = 3"]


def test_misspelt_gin_binding_fails_naming_it(tmp_path):
  result = run_cli("demo", f"--output_dir={tmp_path}", "--gin.foundation_demo.run.stepz=3")
  assert result.returncode == 2
  assert "stepz" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_end_to_end(tmp_path):
  """The foundation demo, shortened: trains, decodes, exports, checks with HF."""
  out = tmp_path / "demo"
  result = run_cli("demo", f"--output_dir={out}", "--steps=30",
                   "--gin.foundation_demo.run.num_eval=32",
                   "--gin.foundation_demo.run.batch_size=32")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["train_steps"] == 30 and report["held_out_examples"] == 32
  metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["loss"] < 0.6 * metrics[0]["loss"]
  assert report["hf_export"]["checked"]
  assert report["hf_export"]["max_abs_logit_difference"] < 1e-4
  assert (out / "hf_model" / "spiece.model").exists()
  assert "foundation_demo.run" in (out / "config.gin").read_text()


def test_data_verb_describes_a_dataset(shared_data):
  result = run_cli("--dataset=obqa", f"--path={shared_data / 'tinythinker' / 'obqa'}",
                   module="tinythinker_jax.data")
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
  assert "run.teach_dataset" in (tmp_path / "config.gin").read_text()
  missing = run_cli("teach", f"--gin.OUTPUT_DIR='{tmp_path}'")
  assert missing.returncode == 2 and "DATASET" in missing.stderr
