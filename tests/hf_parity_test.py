"""Our T5 against Hugging Face's PyTorch T5: import, logits, export, reload."""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tinythinker_jax.convert import CheckpointMismatchError, load_hf_t5, save_hf_t5  # noqa: E402
from tinythinker_jax.models import T5  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)

VOCAB = 101
# Non-square attention: heads x d_kv = 3 x 7 = 21 != d_model = 20.
DIMS = dict(vocab_size=VOCAB, d_model=20, d_ff=36, d_kv=7, num_heads=3, num_layers=2,
            num_decoder_layers=3, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, dropout_rate=0.0,
            decoder_start_token_id=0)
STYLES = {
    "v1.0-relu-tied": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1-gated-gelu-untied": dict(feed_forward_proj="gated-gelu",
                                   tie_word_embeddings=False),
}


def make_hf_model(style: str, seed: int = 0):
  """A tiny random HF T5; for untied styles, lm_head gets its own weights."""
  torch.manual_seed(seed)
  config = transformers.T5Config(**DIMS, **STYLES[style])
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not STYLES[style]["tie_word_embeddings"]:
    # transformers 5 ties lm_head at construction; real v1.1 checkpoints do not.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, DIMS["d_model"]))
  # Spread the layer-norm scales so a mix-up between norms would show.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
  return model


def random_batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (4, 30))
  enc[0, 21:] = 0
  enc[1, 6:] = 0
  enc[3, 29:] = 0
  dec = rng.integers(2, VOCAB, (4, 25))
  dec[:, 0] = 0
  dec[2, 13:] = 0  # Padded decoder inputs: causal masking keeps earlier positions exact.
  return enc, dec


def hf_logits(model, enc, dec):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()


def our_logits(config, params, enc, dec):
  return np.asarray(T5(config).apply({"params": params}, jnp.asarray(enc),
                                     jnp.asarray(dec)))


def assert_close_on_real_positions(ours, ref, dec):
  valid = np.ones(dec.shape, bool)
  valid[2, 13:] = False
  np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_logits_match_pytorch_then_roundtrip(style, tmp_path):
  model = make_hf_model(style)
  model.save_pretrained(tmp_path / "hf")
  config, params = load_hf_t5(str(tmp_path / "hf"))
  assert config.logits_via_embedding == STYLES[style]["tie_word_embeddings"]
  assert config.emb_dim == 20 and config.num_heads * config.head_dim == 21
  for seed in range(3):
    enc, dec = random_batch(seed)
    ref = hf_logits(model, enc, dec)
    assert_close_on_real_positions(our_logits(config, params, enc, dec), ref, dec)

  save_hf_t5(config, params, str(tmp_path / "ours"))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "ours")).eval()
  for seed in range(3):
    enc, dec = random_batch(seed)
    assert_close_on_real_positions(hf_logits(reloaded, enc, dec),
                                   hf_logits(model, enc, dec), dec)


def test_sharded_safetensors_roundtrip(tmp_path):
  model = make_hf_model("v1.1-gated-gelu-untied", seed=1)
  model.save_pretrained(tmp_path / "hf")
  config, params = load_hf_t5(str(tmp_path / "hf"))
  save_hf_t5(config, params, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  files = os.listdir(tmp_path / "sharded")
  assert "model.safetensors.index.json" in files
  assert sum(f.endswith(".safetensors") for f in files) > 2
  config2, params2 = load_hf_t5(str(tmp_path / "sharded"))
  assert config2 == config
  enc, dec = random_batch()
  np.testing.assert_array_equal(our_logits(config2, params2, enc, dec),
                                our_logits(config, params, enc, dec))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "sharded")).eval()
  assert_close_on_real_positions(hf_logits(reloaded, enc, dec),
                                 hf_logits(model, enc, dec), dec)


def test_pytorch_bin_is_read_with_weights_only(tmp_path, monkeypatch):
  model = make_hf_model("v1.0-relu-tied", seed=2)
  folder = tmp_path / "bin"
  folder.mkdir()
  model.config.to_json_file(folder / "config.json")
  torch.save(model.state_dict(), folder / "pytorch_model.bin")
  calls = []
  real_load = torch.load

  def recording_load(*args, **kwargs):
    calls.append(kwargs.get("weights_only"))
    return real_load(*args, **kwargs)

  monkeypatch.setattr(torch, "load", recording_load)
  config, params = load_hf_t5(str(folder))
  assert calls == [True]
  enc, dec = random_batch()
  assert_close_on_real_positions(our_logits(config, params, enc, dec),
                                 hf_logits(model, enc, dec), dec)


def test_missing_tensor_is_named(tmp_path):
  model = make_hf_model("v1.1-gated-gelu-untied")
  model.save_pretrained(tmp_path / "hf")
  from safetensors.numpy import load_file, save_file
  path = tmp_path / "hf" / "model.safetensors"
  tensors = load_file(path)
  del tensors["decoder.block.1.layer.2.DenseReluDense.wi_1.weight"]
  save_file(tensors, path)
  with pytest.raises(CheckpointMismatchError,
                     match=r"decoder\.block\.1\.layer\.2\.DenseReluDense\.wi_1\.weight"):
    load_hf_t5(str(tmp_path / "hf"))


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
  model = make_hf_model("v1.0-relu-tied")
  model.save_pretrained(tmp_path / "hf")
  config_path = tmp_path / "hf" / "config.json"
  hf_config = json.loads(config_path.read_text())
  hf_config["d_ff"] = 40  # The weights say 36.
  config_path.write_text(json.dumps(hf_config))
  with pytest.raises(CheckpointMismatchError) as error:
    load_hf_t5(str(tmp_path / "hf"))
  message = str(error.value)
  assert "encoder.block.0.layer.1.DenseReluDense.wi.weight" in message
  assert "(36, 20)" in message and "(20, 40)" in message


def test_missing_config_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf_t5(str(tmp_path))
