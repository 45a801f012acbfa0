"""The T5 module: buckets, KV-cache decoding, packing, dropout, remat, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_params
from tinythinker_jax import decoding
from tinythinker_jax.models import t5


def _jit_apply(model):
  """`model.apply`, jitted (eager flax dispatch is slow on CPU)."""
  return jax.jit(model.apply, static_argnames=("decode", "mutable", "method",
                                               "enable_dropout"))


def _params(config, seed=1):
  return init_params(config, seed)


def _tokens(rng, shape, vocab, pad_from=None):
  x = rng.integers(2, vocab, shape).astype(np.int32)
  if pad_from:
    for row, start in pad_from.items():
      x[row, start:] = 0
  return jnp.asarray(x)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 8, 20), (False, 10, 7)])
def test_relative_position_buckets_match_hugging_face(bidirectional, num_buckets,
                                                      max_distance):
  torch = pytest.importorskip("torch")
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-300, 301)
  ours = np.asarray(t5.relative_position_bucket(
      jnp.asarray(relative), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance))
  ref = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("tied", [True, False])
def test_decode_cache_equals_teacher_forcing(tiny_config, tied):
  config = tiny_config.replace(logits_via_embedding=tied)
  model, params = t5.T5(config), _params(config)
  rng = np.random.default_rng(0)
  enc = _tokens(rng, (3, 11), config.vocab_size, {1: 6})
  dec = _tokens(rng, (3, 20), config.vocab_size).at[:, 0].set(0)
  apply = _jit_apply(model)
  full = apply({"params": params}, enc, dec)
  encoded = apply({"params": params}, enc, method=t5.T5.encode)
  for chunk in (1, 5):  # One token per step, and several at once.
    cache = jax.jit(decoding.init_cache, static_argnums=(0, 4))(model, params, encoded,
                                                                 enc, 20)
    outs = []
    for i in range(0, 20, chunk):
      logits, variables = apply({"params": params, "cache": cache}, encoded, enc,
                                dec[:, i:i + chunk], decode=True, mutable=("cache",),
                                method=t5.T5.decode)
      cache = variables["cache"]
      outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_greedy_decode_equals_brute_force(tiny_config):
  """Greedy with the cache equals step-by-step argmax of full forward passes."""
  config = tiny_config.replace(vocab_size=16)
  model, params = t5.T5(config), _params(config, seed=3)
  enc = _tokens(np.random.default_rng(1), (4, 9), 16, {2: 4})
  result = jax.jit(lambda p, e: decoding.greedy_decode(model, p, e, max_length=7,
                                                       eos_id=1))(params, enc)
  forward = jax.jit(lambda e, d: model.apply({"params": params}, e, d))
  for row in range(4):
    prefix = [0]
    logprob_sum = 0.0
    for _ in range(7):
      # Pad the prefix to a fixed length (causal masking ignores the padding).
      padded = jnp.asarray([prefix + [0] * (8 - len(prefix))], jnp.int32)
      logits = forward(enc[row:row + 1], padded)[0, len(prefix) - 1]
      token = int(jnp.argmax(logits))
      logprob_sum += float(jax.nn.log_softmax(logits)[token])
      prefix.append(token)
      if token == 1:
        break
    generated = prefix[1:]
    assert int(result.lengths[row]) == len(generated)
    assert list(np.asarray(result.tokens[row, :len(generated)])) == generated
    assert np.all(np.asarray(result.tokens[row, len(generated):]) == 0)
    np.testing.assert_allclose(float(result.token_logprobs[row].sum()), logprob_sum,
                               atol=1e-4)


def test_packed_examples_equal_separate_examples(tiny_config):
  """Segment ids keep packed examples apart: logits equal unpacked ones."""
  model, params = t5.T5(tiny_config), _params(tiny_config)
  apply = _jit_apply(model)
  rng = np.random.default_rng(2)
  a_in, b_in = rng.integers(2, 128, 5), rng.integers(2, 128, 7)
  a_tg, b_tg = rng.integers(2, 128, 4), rng.integers(2, 128, 6)

  def separate(inputs, targets):
    dec = np.concatenate([[0], targets[:-1]])
    return apply({"params": params}, jnp.asarray(inputs[None]), jnp.asarray(dec[None]))[0]

  enc = np.concatenate([a_in, b_in, [0, 0]])[None]
  enc_seg = np.asarray([[1] * 5 + [2] * 7 + [0, 0]])
  dec = np.concatenate([[0], a_tg[:-1], [0], b_tg[:-1]])[None]
  dec_seg = np.asarray([[1] * 4 + [2] * 6])
  packed = apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec),
                 encoder_segment_ids=jnp.asarray(enc_seg),
                 decoder_segment_ids=jnp.asarray(dec_seg))[0]
  np.testing.assert_allclose(packed[:4], separate(a_in, a_tg), atol=1e-5)
  np.testing.assert_allclose(packed[4:], separate(b_in, b_tg), atol=1e-5)


def test_dropout_only_when_enabled(tiny_config):
  config = tiny_config.replace(dropout_rate=0.3)
  model, params = t5.T5(config), _params(config)
  apply = _jit_apply(model)
  enc = _tokens(np.random.default_rng(0), (2, 8), 128)
  dec = _tokens(np.random.default_rng(1), (2, 6), 128)
  a = apply({"params": params}, enc, dec)
  np.testing.assert_array_equal(a, apply({"params": params}, enc, dec))
  b = apply({"params": params}, enc, dec, enable_dropout=True,
            rngs={"dropout": jax.random.key(0)})
  c = apply({"params": params}, enc, dec, enable_dropout=True,
            rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, b) and not np.allclose(b, c)


@pytest.mark.parametrize("policy", ["full", "minimal"])
def test_remat_gives_same_gradients(tiny_config, policy):
  enc = _tokens(np.random.default_rng(0), (2, 8), 128)
  dec = _tokens(np.random.default_rng(1), (2, 6), 128)
  params = _params(tiny_config)

  def grads(config):
    model = t5.T5(config)
    return jax.jit(jax.grad(
        lambda p: jnp.sum(model.apply({"params": p}, enc, dec) ** 2)))(params)

  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
               grads(tiny_config.replace(remat_policy=policy)), grads(tiny_config))


def test_bfloat16_compute_keeps_float32_params(tiny_config):
  config = tiny_config.replace(dtype="bfloat16")
  boxed = t5.init_params(config, jax.random.key(0))
  params = nn.unbox(boxed)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  enc = _tokens(np.random.default_rng(0), (2, 8), 128)
  dec = _tokens(np.random.default_rng(1), (2, 6), 128)
  low = _jit_apply(t5.T5(config))({"params": params}, enc, dec)
  high = _jit_apply(t5.T5(tiny_config))({"params": params}, enc, dec)
  assert low.dtype == jnp.float32
  assert float(jnp.abs(low - high).max()) < 0.1 * float(jnp.abs(high).max())


def test_every_parameter_has_logical_axes(tiny_config):
  boxed = t5.init_params(tiny_config, jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  known = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="mlp_activations.*'swish'"):
    t5.T5Config(mlp_activations=("swish",))
  with pytest.raises(ValueError, match="dtype='fp8'"):
    t5.T5Config(dtype="fp8")
  with pytest.raises(ValueError, match="num_heads must be positive"):
    t5.T5Config(num_heads=0)
  assert t5.T5Config(mlp_activations=["gelu", "linear"]).mlp_activations == (
      "gelu", "linear")


def test_parameter_count_of_t5_small():
  """T5 v1.0 small has 60,506,624 parameters (Raffel et al.; HF t5-small)."""
  shapes = jax.eval_shape(lambda: nn.unbox(t5.init_params(t5.T5Config(),
                                                          jax.random.key(0))))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 60_506_624
