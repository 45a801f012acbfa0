"""Model gin files: published dimensions, and parameter counts equal to HF's T5."""

import dataclasses
import re

import gin
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from tinythinker_jax import gin_utils
from tinythinker_jax.models import llama, t5

# (d_model, num_heads, num_layers, d_kv, d_ff) of the published checkpoints
# (t5-small ... t5-11b; google/t5-v1_1-*; google/flan-t5-*).
PUBLISHED = {
    "t5_1_0/small": (512, 8, 6, 64, 2048), "t5_1_0/base": (768, 12, 12, 64, 3072),
    "t5_1_0/large": (1024, 16, 24, 64, 4096), "t5_1_0/3B": (1024, 32, 24, 128, 16384),
    "t5_1_0/11B": (1024, 128, 24, 128, 65536),
    "t5_1_1/small": (512, 6, 8, 64, 1024), "t5_1_1/base": (768, 12, 12, 64, 2048),
    "t5_1_1/large": (1024, 16, 24, 64, 2816), "t5_1_1/xl": (2048, 32, 24, 64, 5120),
    "t5_1_1/xxl": (4096, 64, 24, 64, 10240),
    "t5_1_1/tiny": (128, 4, 3, 32, 512),
}
for size in ("small", "base", "large", "xl", "xxl", "tiny"):
  PUBLISHED[f"flan_t5/{size}"] = PUBLISHED[f"t5_1_1/{size}"]


def load(name: str) -> t5.T5Config:
  gin.clear_config()
  try:
    gin_utils.parse([f"models/{name}.gin"], ["DROPOUT_RATE = 0.1"])
    return gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
  finally:
    gin.clear_config()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_gin_has_published_dimensions_and_hf_parameter_count(name):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = load(name)
  d_model, heads, layers, d_kv, d_ff = PUBLISHED[name]
  assert (config.emb_dim, config.num_heads, config.num_encoder_layers,
          config.num_decoder_layers, config.head_dim, config.mlp_dim) == (
              d_model, heads, layers, layers, d_kv, d_ff)
  v1_0 = name.startswith("t5_1_0")
  assert config.mlp_activations == (("relu",) if v1_0 else ("gelu", "linear"))
  assert config.logits_via_embedding == v1_0
  assert config.vocab_size == 32128 and config.dropout_rate == 0.1
  assert config.dtype == "auto" and config.param_dtype == "float32"
  assert config.compute_dtype == jnp.float32  # on this CPU; bfloat16 on TPU/GPU

  shapes = jax.eval_shape(lambda: nn.unbox(t5.init_params(config, jax.random.key(0))))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  hf_config = transformers.T5Config(
      vocab_size=32128, d_model=d_model, num_heads=heads, num_layers=layers, d_kv=d_kv,
      d_ff=d_ff, feed_forward_proj="relu" if v1_0 else "gated-gelu",
      tie_word_embeddings=v1_0, decoder_start_token_id=0)
  with torch.device("meta"):
    hf_model = transformers.T5ForConditionalGeneration(hf_config)
  if not v1_0:  # Untie as real v1.1 checkpoints are (transformers 5 ties by default).
    hf_model.lm_head.weight = torch.nn.Parameter(
        torch.empty(32128, d_model, device="meta"))
  hf_count = sum(p.numel() for p in hf_model.parameters())
  assert ours == hf_count


def test_dropout_rate_is_required():
  gin.clear_config()
  try:
    with pytest.raises(gin_utils.GinConfigError, match="DROPOUT_RATE"):
      gin_utils.parse(["models/t5_1_1/small.gin"], [])
  finally:
    gin.clear_config()


def test_misspelt_binding_is_named():
  gin.clear_config()
  try:
    with pytest.raises(gin_utils.GinConfigError, match="emb_dimm"):
      gin_utils.parse(["models/t5_1_1/small.gin"],
                      ["DROPOUT_RATE = 0.0", "t5.T5Config.emb_dimm = 3"])
  finally:
    gin.clear_config()


def test_missing_gin_file_is_named():
  with pytest.raises(gin_utils.GinConfigError, match="models/t5_9/small.gin"):
    gin_utils.parse(["models/t5_9/small.gin"])


# Every run and experiment config parses with its required macros bound, and the
# settings it binds resolve (a misspelt or unknown binding fails here).
REQUIRED = {"RUN_DIR": "'/tmp/r'", "DATASET": "'coin_flip'", "DATASET_PATH": "'/d'",
            "PROMPTS_DIR": "'/p'", "INITIAL_CHECKPOINT_PATH": "'/m'", "VOCABULARY": "'/v'",
            "MODEL_DIR": "'/tmp/m'", "OUTPUT_DIR": "'/tmp/o'", "RECORDS_PATH": "'/r'",
            "PAIRS_PATH": "'/p.jsonl'", "INITIAL_MODEL_DIR": "'/i'",
            "MIXTURE_OR_TASK_NAME": "'x'", "TASK_FEATURE_LENGTHS": "{'inputs': 8}",
            "TRAIN_STEPS": "1", "RECORDS_DIR": "'/r'", "VALIDATION_DATASET_PATH": "'/d'",
            "PRETRAINED": "'/m.gguf'"}
CONFIGS = ["runs/infer.gin", "runs/evaluate.gin", "runs/sample.gin", "runs/dpo.gin",
           "runs/reflect.gin", "runs/demo.gin", "runs/demo_local.gin", "runs/teach.gin",
           "runs/sft.gin", "runs/pipeline.gin",
           "experiments/coin_flip_tinythinker.gin", "experiments/coin_flip_reflect.gin",
           "experiments/coin_flip_finetune_cot.gin", "experiments/csqa_pipeline.gin",
           "experiments/date_finetune_cot_pipeline.gin",
           "experiments/csqa_tinythinker_phase1.gin",
           "experiments/coin_flip_longer_reflect.gin", "experiments/evidence_coin_flip.gin",
           "experiments/evidence_limited.gin", "experiments/evidence_noisy.gin",
           "experiments/shuffled_objects.gin", "experiments/real_svamp.gin"]


@pytest.mark.parametrize("config", CONFIGS)
def test_run_and_experiment_configs_parse(config):
  import os
  assert os.path.exists(os.path.join(gin_utils.GIN_CONFIGS_DIR, config))
  text = open(os.path.join(gin_utils.GIN_CONFIGS_DIR, config)).read()
  def included(text):  # every file included, recursively
    files = [line.split("'")[1] for line in text.splitlines() if line.startswith("include")]
    texts = [open(os.path.join(gin_utils.GIN_CONFIGS_DIR, f)).read() for f in files]
    return "".join(t + included(t) for t in texts)
  includes = included(text)
  bindings = [f"{k} = {v}" for k, v in REQUIRED.items()
              if re.search(rf"^{k} = %gin.REQUIRED", text + includes, re.M)]
  if "include 'models/" not in text + includes and "MODEL_CONFIG" in text + includes:
    config_files = ["models/t5_1_1/tiny.gin", config]
    bindings.append("DROPOUT_RATE = 0.0")
  else:
    config_files = [config]
  gin.clear_config()
  try:
    gin_utils.parse(config_files, bindings)
    for name in ("MODEL_CONFIG",):
      if f"%{name}" in text + includes:
        assert isinstance(gin_utils.resolve(gin_utils.query(name)),
                          (t5.T5Config, llama.LlamaConfig))
    # No shipped config binds a macro that nothing uses.
    assert gin_utils.unused_macros() == {}
  finally:
    gin.clear_config()


def test_a_misspelt_macro_warns_with_the_nearest_name(capsys):
  gin.clear_config()
  try:
    gin_utils.parse(["runs/demo.gin"], ["MODLE_CONFIG = 1", "ZZZ_UNHEARD_OF = 2"])
    assert gin_utils.unused_macros() == {"MODLE_CONFIG": "MODEL_CONFIG",
                                         "ZZZ_UNHEARD_OF": None}
    gin_utils.warn_unused_macros()
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert ("warning: gin macro MODLE_CONFIG is bound but nothing uses it; did you mean "
          "MODEL_CONFIG?") in err
  assert "warning: gin macro ZZZ_UNHEARD_OF is bound but nothing uses it\n" in err


def test_the_binary_warns_about_an_unused_macro(tmp_path):
  import subprocess
  import sys
  command = [sys.executable, "-m", "tinythinker_jax.cli.main", "train",
             "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/sft.gin",
             "--gin.MIXTURE_OR_TASK_NAME='x'", "--gin.TRAIN_STEPS=1",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
             "--gin.REQUIRED_PLATFORM='tpu'"]  # (stops it on this CPU before any work)
  result = subprocess.run(command + ["--gin.MODEL_DIR='m'", "--gin.BACTH_SIZE=8"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 2
  assert ("warning: gin macro BACTH_SIZE is bound but nothing uses it; did you mean "
          "BATCH_SIZE?") in result.stderr
  # A misspelt required macro: gin's error names the misspelling.
  result = subprocess.run(command + ["--gin.MODLE_DIR='m'"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 2
  assert ("MODEL_DIR/macro.value set to `%gin.REQUIRED` but not subsequently overridden "
          "(MODLE_DIR is bound but nothing uses it: did you mean MODEL_DIR?)") in result.stderr


def test_phase_one_and_phase_two_settings_stay_apart_in_one_config():
  """The pipeline's two `TrainSettings` (scopes `phase1/` and `dpo/`) resolve to
  their own values, and phase 2 keeps TinyThinker's recipe."""
  from tinythinker_jax.cli import pipeline
  from tinythinker_jax.stages import phase2
  from tinythinker_jax.training import recipe
  gin.clear_config()
  try:
    gin_utils.parse(["runs/demo.gin"], ["phase1/recipe.TrainSettings.max_grad_norm = 0.5"])
    with gin.config_scope("phase1"):
      phase1 = gin.get_configurable(recipe.TrainSettings)()
    dpo_settings = gin.get_configurable(phase2.DpoSettings)()
    assert (phase1.train_steps, phase1.optimizer, phase1.learning_rate,
            phase1.max_grad_norm, phase1.early_stop_patience) == (600, "adamw", 3e-3,
                                                                   0.5, 3)
    phase2 = dpo_settings.train
    assert (phase2.batch_size, phase2.num_epochs, phase2.optimizer, phase2.schedule,
            phase2.warmup_fraction, phase2.max_grad_norm, phase2.z_loss,
            phase2.early_stop_patience) == (32, 4.0, "adamw", "cosine", 0.1, 1.0, 0.0, 0)
    with gin.config_scope("continued"):
      continued = gin.get_configurable(recipe.TrainSettings)()
    assert (continued.learning_rate, continued.evaluations) == (1e-4, 4)
    assert phase2.learning_rate == 1e-4  # the demo's from-scratch student
    assert (dpo_settings.beta, dpo_settings.alpha, dpo_settings.input_length) == (
        0.5, 0.5, 120)
    assert gin.query_parameter("pipeline.run_pipeline.interleave_interval") == 1
    del pipeline
  finally:
    gin.clear_config()


# The Llama-family sizes and their published parameter counts (model cards).
LLAMA_PUBLISHED = {"llama/smollm2_135m": 134_515_008, "llama/qwen2_5_0_5b": 494_032_768}


@pytest.mark.parametrize("name", sorted(LLAMA_PUBLISHED))
def test_llama_gin_has_the_published_parameter_count(name):
  from tinythinker_jax.families.decoder_only import DecoderOnlyModel
  gin.clear_config()
  try:
    gin_utils.parse([f"models/{name}.gin"], ["ACTIVATION_DTYPE = 'auto'"])
    config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
  finally:
    gin.clear_config()
  shapes = nn.unbox(DecoderOnlyModel(config).abstract_params())
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == LLAMA_PUBLISHED[name]
  assert config.compute_dtype == jnp.float32  # 'auto' on this CPU


@pytest.mark.parametrize("name,count", [("small", 124_439_808), ("medium", 354_823_168),
                                        ("large", 774_030_080)])
def test_gpt2_gin_has_the_published_parameter_count(name, count):
  from tinythinker_jax.families.decoder_only import DecoderOnlyModel
  gin.clear_config()
  try:
    gin_utils.parse([f"models/gpt2/{name}.gin"],
                    ["NUM_EMBEDDINGS = 50257", "ACTIVATION_DTYPE = 'auto'"])
    config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
  finally:
    gin.clear_config()
  shapes = nn.unbox(DecoderOnlyModel(config).abstract_params())
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count


def test_a_runs_folder_in_the_working_directory_does_not_hide_the_configs(
    tmp_path, monkeypatch):
  """`runs/` (where run folders go) in the working directory is a namespace package
  to Python's import system; gin's package lookup of `runs/teach.gin` failed on it."""
  (tmp_path / "runs" / "real").mkdir(parents=True)
  (tmp_path / "models").mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  gin.clear_config()
  try:
    gin_utils.parse(["runs/teach.gin"], ["DATASET = 'coin_flip'", "OUTPUT_DIR = '/tmp/o'"],
                    finalize=False)
    assert gin_utils.query("TEACHER") == "openai"
  finally:
    gin.clear_config()


@pytest.mark.parametrize("model", ["models/llama/smollm2_135m.gin", "models/gpt2/small.gin"])
def test_decoder_only_model_files_work_with_any_run_config(model):
  """A Llama or GPT-2 size after runs/pipeline.gin (which binds no
  ACTIVATION_DTYPE of its own) resolves its model config."""
  gin.clear_config()
  try:
    bindings = ["RUN_DIR = '/tmp/r'", "DATASET = 'coin_flip'"]
    if "gpt2" in model:  # (GPT-2's size files leave the vocabulary to the run)
      bindings.append("NUM_EMBEDDINGS = 50257")
    gin_utils.parse(["runs/pipeline.gin", model], bindings)
    config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
    assert config.dtype == "auto"
  finally:
    gin.clear_config()


def test_local_teacher_settings_reach_the_pipelines_teach_stage(tmp_path, monkeypatch):
  """`LOCAL_SERVERS` and `LOCAL_FRESH_PROMPTS` bound on a pipeline run reach
  `teach_dataset` (they used to stop at runs/teach.gin: a pipeline with
  `TEACHER='local'` always started one server)."""
  from tinythinker_jax.cli import pipeline
  from tinythinker_jax.stages import pipeline as stages_pipeline
  seen = []

  @dataclasses.dataclass
  class Kept:  # what teach_dataset returns, as far as the stage reads it
    kept: int = 1
    dropped: int = 0

  def fake_teach(**kwargs):
    seen.append(kwargs)
    return Kept()
  monkeypatch.setattr(stages_pipeline.teach_lib, "teach_dataset", fake_teach)
  gin.clear_config()
  try:
    gin_utils.parse(["runs/pipeline.gin", "models/t5_1_1/tiny.gin"], [
        f"RUN_DIR = '{tmp_path}'", "DATASET = 'coin_flip'", "TEACHER = 'local'",
        "LOCAL_SERVERS = 2", "LOCAL_FRESH_PROMPTS = False", "DROPOUT_RATE = 0.0",
        "STUDENT_FORMATS = ('finetune_cot',)",
        "pipeline.run_pipeline.stop_after_stage = 'teach'"])
    gin.get_configurable(stages_pipeline.run_pipeline)(progress=False)
  finally:
    gin.clear_config()
  assert seen and all(k["teacher"] == "local" and k["local_servers"] == 2 and
                      k["local_fresh_prompts"] is False for k in seen)
  del pipeline
