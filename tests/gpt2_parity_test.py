"""GPT-2 (Fine-tune-CoT's decoder-only students) against transformers' PyTorch
GPT2LMHeadModel: logits, cached greedy decoding, export round trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tinythinker_jax.convert import hf_gpt2  # noqa: E402
from tinythinker_jax.families.decoder_only import DecoderOnlyModel, decode  # noqa: E402
from tinythinker_jax.models import gpt2  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=64)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # Non-trivial biases and norms.
    for name, p in model.named_parameters():
      if name.endswith("bias") or ".ln_" in name:
        p.add_(torch.randn_like(p) * 0.1)
  folder = tmp_path_factory.mktemp("gpt2")
  model.save_pretrained(folder)
  return model, folder


def test_logits_match_transformers(tiny):
  model, folder = tiny
  config, params = hf_gpt2.load_hf_gpt2(folder)
  assert (config.emb_dim, config.num_layers, config.inner_dim) == (32, 2, 128)
  tokens = np.random.default_rng(0).integers(0, 97, (2, 10))
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(tokens)).logits.numpy()
  got = np.asarray(gpt2.GPT2Module(config).apply({"params": params}, tokens))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_cached_greedy_decoding_equals_transformers_generate(tiny):
  model, folder = tiny
  config, params = hf_gpt2.load_hf_gpt2(folder)
  prompts = [np.array([5, 9, 13]), np.array([7, 8, 2, 40, 41, 42])]
  inputs = np.zeros((2, 6), np.int32)
  for i, p in enumerate(prompts):
    inputs[i, :len(p)] = p
  result = decode(config, params, inputs, max_length=8, eos_id=96)
  for i, p in enumerate(prompts):
    with torch.no_grad():
      out = model.generate(torch.tensor(p[None]), max_new_tokens=8, do_sample=False,
                           eos_token_id=96, pad_token_id=0,
                           attention_mask=torch.ones(1, len(p), dtype=torch.long))
    expected = out[0, len(p):].numpy()
    assert list(np.asarray(result.tokens)[i, :len(expected)]) == list(expected), i


def test_export_round_trips_through_transformers(tiny, tmp_path):
  model, folder = tiny
  student, params = DecoderOnlyModel.load_hf(str(folder))
  assert student.architecture == "gpt2"
  assert DecoderOnlyModel.from_config_json(student.to_json()["config"]) == student
  student.save_hf(params, str(tmp_path / "out"))
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  tokens = torch.tensor([[3, 14, 15, 92, 65]])
  with torch.no_grad():
    np.testing.assert_allclose(again(input_ids=tokens).logits.numpy(),
                               model(input_ids=tokens).logits.numpy(), atol=1e-5)
