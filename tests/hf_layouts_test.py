"""Every output-layer layout transformers 4 and 5 write for T5, v1.1, Flan-T5, mT5.

transformers 5 ties the input and output embeddings of every freshly built
T5 and marks v1.1 with `scale_decoder_outputs: false`, so its folders can be
tied and unscaled; a stored lm_head that differs from `shared` is untied even
under a scaled config. Each case is a fresh tiny model saved by transformers
5 (or a config.json written by hand as transformers 4 wrote them), loaded
with `load_hf_t5` and compared with PyTorch's logits; then exported and
loaded back by transformers 5.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from tests.hf_parity_test import hf_logits  # noqa: E402
from tinythinker_jax.convert import load_hf_t5, save_hf_t5  # noqa: E402
from tinythinker_jax.models import T5  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)

DIMS = dict(d_model=16, d_kv=6, num_heads=3, num_layers=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, dropout_rate=0.0)
# name: (model class, config class, config kwargs, give lm_head its own weights,
#        expected (lm_head stored, logits_via_embedding)).
CASES = {
    "v1.0": ("T5", dict(vocab_size=97, d_ff=24, feed_forward_proj="relu"), False,
             (False, True)),
    "v1.1-fresh-tied-unscaled": (
        "T5", dict(vocab_size=97, d_ff=24, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False), False, (False, False)),
    "flan-untied": ("T5", dict(vocab_size=97, d_ff=20, feed_forward_proj="gated-gelu",
                               num_decoder_layers=3, tie_word_embeddings=False), True,
                    (True, False)),
    "v1.0-untied-scaled": ("T5", dict(vocab_size=97, d_ff=24, feed_forward_proj="relu"),
                           True, (True, False)),
    "mt5-fresh-tied": ("MT5", dict(vocab_size=2500, d_ff=24, tie_word_embeddings=False),
                       False, (False, False)),
    "mt5-untied": ("MT5", dict(vocab_size=2500, d_ff=24, tie_word_embeddings=False), True,
                   (True, False)),
}


def make_model(case: str, seed: int = 0):
  kind, kwargs, own_lm_head, _ = CASES[case]
  torch.manual_seed(seed)
  config = getattr(transformers, f"{kind}Config")(**DIMS, **kwargs)
  model = getattr(transformers, f"{kind}ForConditionalGeneration")(config).eval()
  with torch.no_grad():
    if own_lm_head:
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
  return model


def batch(vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (3, 12))
  enc[1, 7:] = 0
  dec = rng.integers(2, vocab, (3, 9))
  dec[:, 0] = 0
  return enc, dec


def our_logits(config, params, enc, dec):
  # One compiled program (op by op, each primitive would be compiled alone).
  return np.asarray(jax.jit(T5(config).apply)({"params": params}, jnp.asarray(enc),
                                               jnp.asarray(dec)))


def check_export(config, params, reference, ours, tmp_path, enc, dec):
  """Our export loads in transformers 5, and back here, to the same logits."""
  save_hf_t5(config, params, str(tmp_path / "export"))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "export")).eval()
  np.testing.assert_allclose(hf_logits(reloaded, enc, dec), reference, atol=1e-4, rtol=0)
  config2, params2 = load_hf_t5(str(tmp_path / "export"))
  assert config2 == config
  np.testing.assert_array_equal(our_logits(config2, params2, enc, dec), ours)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_transformers5_folder_loads_to_pyhf_logits(case, tmp_path):
  model = make_model(case)
  model.save_pretrained(tmp_path / "hf")
  stored = load_file(tmp_path / "hf" / "model.safetensors")
  lm_head_stored, via_embedding = CASES[case][3]
  assert ("lm_head.weight" in stored) == lm_head_stored  # the layout under test
  config, params = load_hf_t5(str(tmp_path / "hf"))
  assert config.logits_via_embedding == via_embedding
  assert config.vocab_size == CASES[case][1]["vocab_size"]
  enc, dec = batch(config.vocab_size)
  reference = hf_logits(model, enc, dec)
  ours = our_logits(config, params, enc, dec)
  np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
  check_export(config, params, reference, ours, tmp_path, enc, dec)


def test_tied_unscaled_pytorch_bin_only(tmp_path):
  model = make_model("v1.1-fresh-tied-unscaled", seed=3)
  folder = tmp_path / "bin"
  folder.mkdir()
  model.config.to_json_file(folder / "config.json")
  state = model.state_dict()
  assert state["lm_head.weight"].data_ptr() == state["shared.weight"].data_ptr()
  torch.save(state, folder / "pytorch_model.bin")
  config, params = load_hf_t5(str(folder))
  assert not config.logits_via_embedding
  enc, dec = batch(config.vocab_size, seed=1)
  np.testing.assert_allclose(our_logits(config, params, enc, dec),
                             hf_logits(model, enc, dec), atol=1e-4, rtol=0)


def transformers4_config(model, **keys) -> dict:
  """config.json as transformers 4 wrote it: no `scale_decoder_outputs`."""
  c = model.config
  out = dict(architectures=[type(model).__name__], d_ff=c.d_ff, d_kv=c.d_kv,
             d_model=c.d_model, decoder_start_token_id=0, dropout_rate=0.0,
             eos_token_id=1, initializer_factor=1.0, is_encoder_decoder=True,
             layer_norm_epsilon=1e-6, num_decoder_layers=c.num_decoder_layers,
             num_heads=c.num_heads, num_layers=c.num_layers, pad_token_id=0,
             relative_attention_num_buckets=c.relative_attention_num_buckets,
             relative_attention_max_distance=c.relative_attention_max_distance,
             vocab_size=c.vocab_size, torch_dtype="float32",
             transformers_version="4.41.2", use_cache=True)
  out.update(keys)
  return {k: v for k, v in out.items() if v is not None}


def write_transformers4_folder(model, folder, config: dict):
  """Weights as a transformers 4 `.bin` held them: every tied copy stored."""
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(config))
  tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    tensors[name] = tensors["shared.weight"].copy()
  save_file(tensors, folder / "model.safetensors")


# name: (case whose model is written, config keys, expected logits_via_embedding).
TRANSFORMERS4 = {
    # t5-small: no feed_forward_proj and no tie key (both default), lm_head = shared.
    "t5-small": ("v1.0", dict(model_type="t5", n_positions=512), True),
    # google/t5-v1_1-small and flan-t5-small: untied, lm_head stored.
    "t5-v1_1": ("flan-untied", dict(model_type="t5", feed_forward_proj="gated-gelu",
                                    tie_word_embeddings=False), False),
    # google/mt5-small.
    "mt5": ("mt5-untied", dict(model_type="mt5", feed_forward_proj="gated-gelu",
                               tie_word_embeddings=False,
                               tokenizer_class="T5Tokenizer"), False),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS4))
def test_transformers4_style_config(name, tmp_path):
  case, keys, via_embedding = TRANSFORMERS4[name]
  model = make_model(case, seed=5)
  config_json = transformers4_config(model, **keys)
  assert "scale_decoder_outputs" not in config_json
  folder = tmp_path / name
  write_transformers4_folder(model, folder, config_json)
  config, params = load_hf_t5(str(folder))
  assert config.logits_via_embedding == via_embedding
  assert config.mlp_activations == (("relu",) if name == "t5-small" else ("gelu", "linear"))
  enc, dec = batch(config.vocab_size, seed=2)
  reference = hf_logits(model, enc, dec)
  np.testing.assert_allclose(our_logits(config, params, enc, dec), reference, atol=1e-4,
                             rtol=0)
  # transformers 5 reads the hand-written folder the same way.
  cls = getattr(transformers, f"{CASES[case][0]}ForConditionalGeneration")
  np.testing.assert_allclose(hf_logits(cls.from_pretrained(str(folder)).eval(), enc, dec),
                             reference, atol=1e-5, rtol=0)
