"""The Llama family against transformers' PyTorch models: tiny checkpoints made
here with transformers (Llama with grouped-query attention, tied embeddings,
Qwen2 with attention biases), imported, and their logits compared."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tinythinker_jax import errors  # noqa: E402
from tinythinker_jax.convert import hf_llama  # noqa: E402
from tinythinker_jax.models import llama  # noqa: E402

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64)
VARIANTS = {
    "llama_gqa": (transformers.LlamaConfig, dict(num_key_value_heads=2, rope_theta=500.0)),
    "llama_tied": (transformers.LlamaConfig, dict(num_key_value_heads=4,
                                                  tie_word_embeddings=True)),
    "qwen2_bias": (transformers.Qwen2Config, dict(num_key_value_heads=2,
                                                  tie_word_embeddings=False)),
}


def make_folder(tmp_path, variant):
  config_cls, extra = VARIANTS[variant]
  torch.manual_seed(0)
  config = config_cls(**COMMON, **extra)
  model = (transformers.Qwen2ForCausalLM if config_cls is transformers.Qwen2Config
           else transformers.LlamaForCausalLM)(config).eval()
  with torch.no_grad():  # Non-zero biases and norm scales, so that each is exercised.
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(tmp_path / variant)
  return model, tmp_path / variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
  model, folder = make_folder(tmp_path, variant)
  config, params = hf_llama.load_hf_llama(folder)
  assert config.tie_word_embeddings == (variant == "llama_tied")
  assert config.attention_bias == (variant == "qwen2_bias")
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, COMMON["vocab_size"], (2, 11))
  mask = np.ones_like(tokens)
  mask[1, 8:] = 0  # Right padding in the second row.
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(tokens),
                     attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(llama.LlamaModule(config).apply({"params": params}, tokens,
                                                    attention_mask=mask))
  np.testing.assert_allclose(got[0], expected[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got[1, :8], expected[1, :8], atol=1e-4, rtol=1e-4)


def test_packed_segments_equal_separate_sequences(tmp_path):
  model, folder = make_folder(tmp_path, "llama_gqa")
  config, params = hf_llama.load_hf_llama(folder)
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, 97, 5), rng.integers(0, 97, 7)
  packed = np.concatenate([a, b])[None]
  segments = np.array([[1] * 5 + [2] * 7])
  positions = np.array([list(range(5)) + list(range(7))])
  module = llama.LlamaModule(config)
  got = np.asarray(module.apply({"params": params}, packed, positions=positions,
                                segment_ids=segments))
  with torch.no_grad():
    for seq, rows in ((a, slice(0, 5)), (b, slice(5, 12))):
      expected = model(input_ids=torch.tensor(seq[None])).logits.numpy()
      np.testing.assert_allclose(got[:, rows], expected, atol=1e-4, rtol=1e-4)


def test_import_errors_name_the_file_and_weight(tmp_path):
  _, folder = make_folder(tmp_path, "llama_gqa")
  config = (folder / "config.json").read_text()
  (folder / "config.json").write_text(config.replace('"num_hidden_layers": 2',
                                                     '"num_hidden_layers": 3'))
  with pytest.raises(errors.UserError, match="weight 'layers.2.self_attn.q_proj.weight' "
                                             "is missing"):
    hf_llama.load_hf_llama(folder)
  (folder / "config.json").write_text(config.replace('"LlamaForCausalLM"', '"GPT2LMHeadModel"'))
  with pytest.raises(errors.UserError, match="config.json: architectures='GPT2LMHeadModel'"):
    hf_llama.load_hf_llama(folder)


def test_completion_logps_match_transformers_on_unpadded_sequences(tmp_path):
  """Prompts and completions of different lengths in one batch: each row's
  completion log-probabilities equal transformers' on that row alone."""
  from tinythinker_jax.families import decoder_only
  model, folder = make_folder(tmp_path, "qwen2_bias")
  config, params = hf_llama.load_hf_llama(folder)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(1, 97, n) for n in (3, 6)]
  completions = [rng.integers(1, 97, n) for n in (5, 2)]
  inputs = np.zeros((2, 7), np.int32)
  targets = np.zeros((2, 6), np.int32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    inputs[i, :len(p)], targets[i, :len(c)] = p, c
  logps, _ = decoder_only.completion_logps(config, params, inputs, targets)
  logps = np.asarray(logps)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    sequence = torch.tensor(np.concatenate([p, c])[None])
    with torch.no_grad():
      log_probs = torch.log_softmax(model(input_ids=sequence).logits[0], -1).numpy()
    expected = [log_probs[len(p) - 1 + t, c[t]] for t in range(len(c))]
    np.testing.assert_allclose(logps[i, :len(c)], expected, atol=1e-4, rtol=1e-4)
    assert (logps[i, len(c):] == 0).all()  # Padding.


def _ragged_prompts(rng, lengths, width):
  prompts = [rng.integers(3, 97, n) for n in lengths]
  inputs = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    inputs[i, :len(p)] = p
  return prompts, inputs


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_bias"])
def test_cached_greedy_decoding_equals_transformers_generate(tmp_path, variant):
  """Prompts of different lengths in one batch, greedy over the KV cache: each
  row equals transformers' greedy generation of that prompt alone, and the
  log-probabilities equal the uncached forward pass on the generated text."""
  from tinythinker_jax.families import decoder_only
  model, folder = make_folder(tmp_path, variant)
  config, params = hf_llama.load_hf_llama(folder)
  prompts, inputs = _ragged_prompts(np.random.default_rng(3), (2, 7, 4), 8)
  eos = 2
  result = decoder_only.decode(config, params, inputs, max_length=10, eos_id=eos)
  tokens = np.asarray(result.tokens)
  for i, p in enumerate(prompts):
    with torch.no_grad():
      out = model.generate(torch.tensor(p[None]), max_new_tokens=10, do_sample=False,
                           eos_token_id=eos, pad_token_id=0,
                           attention_mask=torch.ones(1, len(p), dtype=torch.long))
    expected = out[0, len(p):].numpy()
    assert list(tokens[i, :len(expected)]) == list(expected), i
    assert (tokens[i, len(expected):] == 0).all()
  logps, _ = decoder_only.completion_logps(config, params, inputs, tokens)
  np.testing.assert_allclose(np.asarray(result.token_logprobs), np.asarray(logps),
                             atol=1e-4, rtol=1e-4)


def test_cached_sampling_is_keyed_per_prompt_and_scored_like_training(tmp_path):
  from tinythinker_jax.families import decoder_only
  import jax
  _, folder = make_folder(tmp_path, "llama_tied")
  config, params = hf_llama.load_hf_llama(folder)
  prompts, inputs = _ragged_prompts(np.random.default_rng(4), (3, 6), 6)
  keys = jax.random.split(jax.random.key(0), 2)
  result = decoder_only.decode(config, params, inputs, max_length=8, eos_id=2, rng=keys,
                               temperature=1.0, num_samples=3)
  tokens = np.asarray(result.tokens)
  assert tokens.shape == (6, 8) and len({tuple(r) for r in tokens}) > 2
  # A prompt's samples do not depend on the other prompts in the batch.
  alone = decoder_only.decode(config, params, inputs[1:], max_length=8, eos_id=2,
                              rng=keys[1:], temperature=1.0, num_samples=3)
  np.testing.assert_array_equal(np.asarray(alone.tokens), tokens[3:])
  logps, _ = decoder_only.completion_logps(config, params, np.repeat(inputs, 3, 0), tokens)
  np.testing.assert_allclose(np.asarray(result.token_logprobs), np.asarray(logps),
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_round_trips_through_transformers(tmp_path, variant):
  """Imported, exported, loaded by transformers: the same logits and the same
  greedy generation as the original model."""
  model, folder = make_folder(tmp_path, variant)
  config, params = hf_llama.load_hf_llama(folder)
  hf_llama.save_hf_llama(config, params, tmp_path / "exported")
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
  assert type(again) is type(model)
  tokens = torch.tensor(np.random.default_rng(5).integers(3, 97, (1, 6)))
  with torch.no_grad():
    np.testing.assert_allclose(again(input_ids=tokens).logits.numpy(),
                               model(input_ids=tokens).logits.numpy(), atol=1e-5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert again.generate(tokens, **kwargs).tolist() == model.generate(tokens, **kwargs).tolist()
  config_again, _ = hf_llama.load_hf_llama(tmp_path / "exported")
  assert config_again == config


def test_dpo_loss_on_padded_prompts_matches_a_hand_computation(tmp_path):
  """The preference objective on a decoder-only student, prompts of different
  lengths padded in one batch: its loss equals -log sigmoid(beta h) + alpha NLL
  computed by hand from transformers' log-softmax over each unpadded prompt +
  response, the prompt's tokens scoring nothing."""
  import jax

  from tinythinker_jax.families import decoder_only
  from tinythinker_jax.training import dpo
  from tinythinker_jax.training import step as step_lib
  model, folder = make_folder(tmp_path, "llama_gqa")
  config, params = hf_llama.load_hf_llama(folder)
  rng = np.random.default_rng(5)
  prompts, inputs = _ragged_prompts(rng, (2, 5, 4), 6)
  lengths = {"chosen": (4, 2, 3), "rejected": (1, 4, 3)}
  batch = {"encoder_input_tokens": inputs,
           "reference_chosen_logps": rng.normal(-8, 2, 3).astype(np.float32),
           "reference_rejected_logps": rng.normal(-8, 2, 3).astype(np.float32)}
  responses = {}
  for side, ns in lengths.items():
    rows = [list(rng.integers(3, 97, n - 1)) + [1] for n in ns]  # EOS last
    responses[side] = rows
    batch[f"{side}_target_tokens"] = np.array([r + [0] * (5 - len(r)) for r in rows],
                                              np.int32)
  beta, alpha = 0.5, 0.5
  objective = dpo.PreferenceObjective(decoder_only.DecoderOnlyModel(config), beta=beta,
                                      alpha=alpha, loss_type="sigmoid",
                                      nll_normalization="batch_tokens")
  loss, _ = jax.jit(lambda p, b: step_lib.mean_loss(objective, p, b))(params, batch)

  def hand_logp(prompt, response):
    sequence = torch.tensor(np.concatenate([prompt, response])[None])
    with torch.no_grad():
      log_probs = torch.log_softmax(model(input_ids=sequence).logits[0].double(), -1).numpy()
    return sum(log_probs[len(prompt) - 1 + t, response[t]] for t in range(len(response)))

  prefs, chosen_total = [], 0.0
  for i, prompt in enumerate(prompts):
    pc = hand_logp(prompt, responses["chosen"][i])
    pr = hand_logp(prompt, responses["rejected"][i])
    h = (pc - batch["reference_chosen_logps"][i]) - (pr - batch["reference_rejected_logps"][i])
    prefs.append(np.log1p(np.exp(-beta * h)))
    chosen_total += pc
  nll = -chosen_total / sum(lengths["chosen"])
  np.testing.assert_allclose(float(loss), np.mean(prefs) + alpha * nll, rtol=1e-4)
