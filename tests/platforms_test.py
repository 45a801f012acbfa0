"""The platform check, precision by platform, peaks, memory metrics, and model FLOPs
against a hand count and against XLA's own cost analysis."""

import os
import subprocess
import sys
import types

import gin
import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

from tinythinker_jax import platforms
from tinythinker_jax.cli import train
from tinythinker_jax.models import flops, t5


def test_a_required_platform_that_does_not_match_fails_with_a_clear_message():
  info = {"backend": "cpu", "device_kind": "cpu", "device_count": 2,
          "local_device_count": 2, "process_count": 1, "process_index": 0}
  platforms.check(None, info)
  platforms.check("cpu", info)
  with pytest.raises(platforms.PlatformError,
                     match=r"REQUIRED_PLATFORM='tpu', but JAX runs on 'cpu' \(2 x cpu.*"
                     r"install the TPU extra.*make install-tpu"):
    platforms.check("tpu", info)
  with pytest.raises(platforms.PlatformError, match=r"'cuda'.*runs on 'cpu'.*\[cuda12\]"):
    platforms.check("cuda", info)  # an alias of 'gpu'
  platforms.check("gpu", dict(info, backend="gpu"))
  with pytest.raises(platforms.PlatformError, match=r"REQUIRED_PLATFORM='npu': expected"):
    platforms.check("npu", info)


def test_a_binary_logs_the_platform_and_stops_before_any_work(tmp_path, capsys):
  """`tinythinker train` with REQUIRED_PLATFORM='gpu' on this CPU: exit 2, one
  line naming the setting, and nothing written to the model dir."""
  model_dir = tmp_path / "model"
  try:
    code = train.main(["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/sft.gin",
                       f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='x'",
                       "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
                       "--gin.TRAIN_STEPS=1", "--gin.REQUIRED_PLATFORM='gpu'"])
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert code == 2
  assert "platform: backend=cpu" in err
  assert "precision: activations float32 (ACTIVATION_DTYPE='auto'), parameters float32" \
      in err
  assert "tinythinker train: REQUIRED_PLATFORM='gpu', but JAX runs on 'cpu'" in err
  assert not model_dir.exists()


def test_activation_dtype_defaults_by_platform():
  assert platforms.activation_dtype("auto", "tpu") == "bfloat16"
  assert platforms.activation_dtype("auto", "gpu") == "bfloat16"
  assert platforms.activation_dtype("auto", "cpu") == "float32"
  assert platforms.activation_dtype("bfloat16", "cpu") == "bfloat16"  # overridden
  assert platforms.activation_dtype("float32", "tpu") == "float32"
  assert t5.T5Config().dtype == "auto"
  assert t5.T5Config().compute_dtype == jnp.float32  # JAX runs on CPU here
  assert t5.T5Config(dtype="bfloat16").compute_dtype == jnp.bfloat16


def test_peak_table_and_cpu_estimate():
  assert platforms.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
  assert platforms.peak_tflops("NVIDIA H100 PCIe", "float32") == 378.0
  assert platforms.peak_tflops("NVIDIA H200") == 989.4
  assert platforms.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert platforms.peak_tflops("TPU v4") == 275.0
  assert platforms.peak_tflops("TPU v5 lite") == 197.0
  assert platforms.peak_tflops("TPU v5") == 459.0
  assert platforms.peak_tflops("Some NPU") is None
  assert platforms.cpu_flops_per_cycle({"avx2", "fma"}) == 32
  assert platforms.cpu_flops_per_cycle({"avx512f", "avx2", "fma"}) == 64
  gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
  assert platforms.peak_flops([gpu] * 8) == pytest.approx(8 * 989.4e12)
  assert platforms.peak_tflops("TPU v4 lite") == 137.5
  # CPU devices (fake or not) share the host's cores: the host's peak, once,
  # however many there are.
  cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
  assert platforms.peak_flops([cpu] * 8) == platforms.peak_flops([cpu])
  host = platforms.cpu_peak_tflops()
  if host is not None:  # /proc/cpuinfo gives a clock (x86 Linux)
    assert platforms.peak_flops([cpu]) == pytest.approx(host * 1e12)
    assert host >= 0.001


def test_memory_metrics_take_the_fullest_device():
  def device(stats):
    return types.SimpleNamespace(memory_stats=lambda: stats)
  devices = [device({"peak_bytes_in_use": 5, "bytes_in_use": 3}),
             device({"peak_bytes_in_use": 9, "bytes_in_use": 1}), device(None)]
  assert platforms.memory_metrics(devices) == {"peak_bytes_per_device": 9.0,
                                               "bytes_in_use_per_device": 3.0}
  assert platforms.memory_metrics(jax.devices()) == {}  # XLA's CPU client reports none


def _config(**changes):
  base = dict(vocab_size=7, emb_dim=4, num_heads=2, head_dim=3, mlp_dim=5,
              num_encoder_layers=1, num_decoder_layers=1,
              mlp_activations=("gelu", "linear"), logits_via_embedding=False,
              dropout_rate=0.0)
  return t5.T5Config(**dict(base, **changes))


def test_flops_against_a_hand_count():
  # d=4, h = 2 heads x 3 = 6, f=5, gated MLP (2 input projections), V=7;
  # one encoder and one decoder layer; T_in=3, T_tgt=2, one sequence.
  encoder_layer = 4 * 4 * 6 + 3 * 4 * 5          # q,k,v,o + wi_0, wi_1, wo = 156
  decoder_layer = 4 * 4 * 6 + 2 * 4 * 6 + 3 * 4 * 5  # self + cross q,o + MLP = 204
  cross_kv = 2 * 4 * 6                           # cross k, v (on encoder outputs) = 48
  logits = 4 * 7                                 # = 28
  matmuls = 2 * (encoder_layer * 3 + cross_kv * 3 + decoder_layer * 2 + logits * 2)
  attention = 4 * 6 * (3 * 3) + 4 * 6 * (2 * 2) + 4 * 6 * (2 * 3)  # enc, self, cross
  assert (matmuls, attention) == (2152, 456)
  config = _config()
  assert flops.forward_flops(config, 1, 3, 2) == 2152 + 456
  assert flops.train_step_flops(config, 5, 3, 2) == 5 * 3 * (2152 + 456)
  # Decoding 2 tokens: the encoder and cross k, v once; then per step t the
  # decoder layer and logits, and attention over t+1 cached and 3 encoder positions.
  decode = (2 * (encoder_layer + cross_kv) * 3 + 4 * 6 * 9 +
            2 * 2 * (decoder_layer + logits) + 4 * 6 * ((1 + 3) + (2 + 3)))
  assert flops.decode_flops(config, 1, 3, 2) == decode
  encode = 2 * (encoder_layer + cross_kv) * 3 + 4 * 6 * 9
  assert flops.decode_flops(config, 2, 3, 2, num_samples=4) == 2 * (
      encode + 4 * (decode - encode))
  # T5 v1.0: relu MLP (one input projection); the tied output layer still costs d·V.
  assert flops.forward_flops(_config(mlp_activations=("relu",), logits_via_embedding=True),
                             1, 3, 2) == 2152 - 2 * 4 * 5 * (3 + 2) + 456


def test_step_flops_from_batch_shapes():
  config = _config()
  one = flops.train_step_flops(config, 4, 3, 2)
  assert flops.batch_step_flops(config, {"encoder_input_tokens": (4, 3),
                                         "decoder_target_tokens": (4, 2)}) == one
  # Preference pairs: the policy runs chosen and rejected with the inputs repeated.
  assert flops.batch_step_flops(config, {"encoder_input_tokens": (4, 3),
                                         "chosen_target_tokens": (4, 2),
                                         "rejected_target_tokens": (4, 2)}) == 2 * one
  assert flops.batch_step_flops(config, {"tokens": (4, 3)}) is None


@pytest.mark.parametrize("activations,lengths", [(("gelu", "linear"), (64, 32)),
                                                 (("relu",), (32, 64))])
def test_flops_agree_with_xla_cost_analysis(activations, lengths):
  """XLA's count of the compiled forward pass (every op, so a little more than
  the matmuls and attention) is within 2% of ours at a size where they dominate."""
  config = _config(vocab_size=512, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512,
                   num_encoder_layers=2, num_decoder_layers=2, mlp_activations=activations,
                   dtype="float32")
  params = jax.eval_shape(lambda: nn.unbox(t5.init_params(config, jax.random.key(0))))
  batch, (input_length, target_length) = 2, lengths
  forward = jax.jit(lambda p, e, d: t5.T5(config).apply({"params": p}, e, d))
  analysis = forward.lower(params, jax.ShapeDtypeStruct((batch, input_length), jnp.int32),
                           jax.ShapeDtypeStruct((batch, target_length), jnp.int32)
                           ).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  ours = flops.forward_flops(config, batch, input_length, target_length)
  assert 1.0 <= analysis["flops"] / ours < 1.02


def test_tensorflow_starts_without_its_noise_and_keeps_real_messages(tmp_path):
  """Importing the seqio tasks (TensorFlow) on a CPU machine prints none of
  TensorFlow's start-up notices; a real message on stderr still gets through."""
  from tinythinker_jax import tf_import
  script = (
      "import os\n"
      "from tinythinker_jax import tasks, tf_import\n"
      "with tf_import.filtered_stderr(tf_import.noise_patterns()):\n"
      "  os.write(2, b'E0000 00:00:1 x.cc:1] a real TensorFlow error\\n')\n"
      "print('ok')\n")
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "ok"
  assert "a real TensorFlow error" in result.stderr
  for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
    assert noise not in result.stderr, result.stderr
  if not tf_import.has_nvidia_device():
    assert "cuInit" not in result.stderr and "cuda drivers" not in result.stderr
