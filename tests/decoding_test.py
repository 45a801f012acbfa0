"""Sampling and beam search against references: the softmax, hand-picked sets, brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.conftest import init_params, jitted_forward, staggered_chooser
from tinythinker_jax import decoding
from tinythinker_jax.models import t5

LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], np.float32)


def reference_probs(temperature=1.0, top_k=0, top_p=1.0):
  """Written independently of decoding.filter_logits: sort, cut, renormalise."""
  z = LOGITS[0].astype(np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  keep = np.zeros_like(p, bool)
  mass = 0.0
  for rank, i in enumerate(order):
    if (top_k and rank >= top_k) or (top_p < 1.0 and mass >= top_p):
      break
    keep[i] = True
    mass += p[i]
  q = np.where(keep, p, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0),
                                                     (1.0, 3, 1.0), (1.0, 0, 0.8),
                                                     (1.5, 4, 0.9)])
def test_sampled_frequencies_match_the_filtered_softmax(temperature, top_k, top_p):
  n = 40_000
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, LOGITS.shape[1]))
  # The logits are an argument, not a closed-over constant XLA would fold at compile time.
  draws = np.asarray(jax.jit(lambda r, x: decoding.sample_token(
      r, x, temperature=temperature, top_k=top_k, top_p=top_p))(jax.random.key(0), logits))
  expected = reference_probs(temperature, top_k, top_p)
  counts = np.bincount(draws, minlength=len(expected))
  assert np.all(counts[expected == 0] == 0)  # Filtered tokens are never drawn.
  kept = expected > 0
  _, p_value = stats.chisquare(counts[kept], n * expected[kept])
  assert p_value > 1e-3, (counts, n * expected)


def test_top_k_and_top_p_keep_exactly_the_right_tokens():
  finite = lambda **kw: np.isfinite(np.asarray(  # noqa: E731
      decoding.filter_logits(jnp.asarray(LOGITS), **kw)))[0].tolist()
  assert finite(top_k=2) == [True, True, False, False, False, False]
  probs = reference_probs()  # [0.574, 0.211, 0.128, 0.078, 0.029, 0.004]
  assert probs[0] < 0.6 < probs[0] + probs[1]
  assert finite(top_p=0.6) == [True, True, False, False, False, False]
  assert finite(top_p=0.5) == [True, False, False, False, False, False]
  assert finite(top_p=0.95) == [True, True, True, True, False, False]
  tied = jnp.asarray([[1.0, 1.0, 0.0]])
  assert np.isfinite(np.asarray(decoding.filter_logits(tied, top_k=1)))[0].tolist() == [
      True, True, False]  # Ties at the k-th value are kept.


@pytest.fixture(scope="module")
def tiny():
  config = t5.T5Config(vocab_size=6, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=1, num_decoder_layers=2,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                       dropout_rate=0.0)
  params = init_params(config, 4)
  # Sharpen the output layer so the search problem is not flat.
  params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"] * 3
  enc = jnp.asarray([[2, 3, 4, 5, 1], [5, 5, 2, 1, 0]], jnp.int32)
  return t5.T5(config), params, enc


def brute_force_best(model, params, enc_row, max_length, vocab=6, eos=1):
  """Scores every complete hypothesis (ends in EOS, or reaches max_length) in one
  teacher-forced forward pass, and returns the best (score, sequence)."""
  hypotheses = [seq for length in range(1, max_length + 1)
                for seq in itertools.product(range(vocab), repeat=length)
                if eos not in seq[:-1] and (length == max_length or seq[-1] == eos)]
  padded = np.zeros((len(hypotheses), max_length), np.int32)
  for i, seq in enumerate(hypotheses):
    padded[i, :len(seq)] = seq
  decoder_in = np.pad(padded, ((0, 0), (1, 0)))[:, :-1]
  enc = jnp.repeat(enc_row[None], len(hypotheses), axis=0)
  logp = np.asarray(jax.nn.log_softmax(jitted_forward(model.config)(
      params, enc, jnp.asarray(decoder_in))))
  scores = [sum(logp[i, t, tok] for t, tok in enumerate(seq))
            for i, seq in enumerate(hypotheses)]
  best = int(np.argmax(scores))
  return scores[best], hypotheses[best]


def test_beam_search_equals_brute_force(tiny):
  model, params, enc = tiny
  max_length = 3
  result = jax.jit(lambda p, e: decoding.beam_search(
      model, p, e, beam_size=36, max_length=max_length))(params, enc)
  for row in range(enc.shape[0]):
    score, seq = brute_force_best(model, params, enc[row], max_length)
    assert float(result.scores[row, 0]) == pytest.approx(score, abs=1e-4)
    length = int(result.lengths[row, 0])
    assert tuple(np.asarray(result.tokens[row, 0, :length]).tolist()) == seq
  assert np.all(np.diff(np.asarray(result.scores), axis=1) <= 1e-6)  # Best first.


def test_small_beam_is_no_better_than_exhaustive_and_beam_one_is_greedy(tiny):
  model, params, enc = tiny
  wide = decoding.beam_search(model, params, enc, beam_size=36, max_length=3)
  narrow = decoding.beam_search(model, params, enc, beam_size=1, max_length=3)
  greedy = decoding.greedy_decode(model, params, enc, max_length=3)
  assert np.all(np.asarray(narrow.scores[:, 0]) <= np.asarray(wide.scores[:, 0]) + 1e-5)
  np.testing.assert_array_equal(narrow.tokens[:, 0], greedy.tokens)
  np.testing.assert_allclose(narrow.scores[:, 0], greedy.token_logprobs.sum(-1), atol=1e-5)


def test_sample_decode_several_samples_with_model_logprobs(tiny):
  model, params, enc = tiny
  out = jax.jit(lambda p, e, r: decoding.sample_decode(
      model, p, e, r, max_length=4, num_samples=8, temperature=1.0))(
          params, enc, jax.random.key(1))
  assert out.tokens.shape == (16, 4)
  assert len({tuple(r) for r in np.asarray(out.tokens[:8]).tolist()}) > 1
  # The returned log-probabilities are the model's: check them by teacher forcing.
  repeated = jnp.repeat(enc, 8, axis=0)
  decoder_in = jnp.pad(out.tokens, ((0, 0), (1, 0)))[:, :-1]
  logp = jax.nn.log_softmax(jitted_forward(model.config)(params, repeated, decoder_in))
  gathered = jnp.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
  mask = jnp.arange(4)[None] < out.lengths[:, None]
  np.testing.assert_allclose(jnp.where(mask, gathered, 0), out.token_logprobs, atol=1e-5)
  # top_k=1 sampling is greedy decoding.
  top1 = decoding.sample_decode(model, params, enc, jax.random.key(2), max_length=4,
                                top_k=1)
  np.testing.assert_array_equal(top1.tokens,
                                decoding.greedy_decode(model, params, enc,
                                                       max_length=4).tokens)


@pytest.mark.parametrize("sampled", [False, True])
def test_finished_rows_set_aside_leave_every_rows_tokens_unchanged(sampled, monkeypatch):
  """T5's decode loop moves its unfinished rows into smaller batches as rows end
  (`shrink_levels`: 32 -> 8 -> 2): rows ending at very different steps get the
  tokens and log-probabilities of the loop that keeps all 32 rows to the end,
  and the log-probabilities are the teacher-forced model's."""
  config = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=1, num_decoder_layers=2,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                       dropout_rate=0.0)
  model, params = t5.T5(config), init_params(config, 5)
  rng = np.random.default_rng(3)
  enc = np.zeros((32, 6), np.int32)
  for i in range(32):
    n = 1 + i % 5
    enc[i, :n] = rng.integers(2, 32, n)
    enc[i, n] = 1
  choose, stops = staggered_chooser(32, sampled)

  def run():
    return jax.jit(lambda p, e: decoding._decode_loop(model, p, e, 12, 1, choose))(
        params, enc)
  assert decoding.shrink_levels(32) == [32, 8, 2]
  got = run()
  monkeypatch.setattr(decoding, "shrink_levels", lambda rows: [rows])
  want = run()
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(stops) + 1)
  np.testing.assert_allclose(np.asarray(got.token_logprobs),
                             np.asarray(want.token_logprobs), atol=1e-5)
  decoder_in = jnp.pad(got.tokens, ((0, 0), (1, 0)))[:, :-1]
  logp = jax.nn.log_softmax(jitted_forward(config)(params, enc, decoder_in))
  gathered = jnp.take_along_axis(logp, got.tokens[..., None], -1)[..., 0]
  mask = jnp.arange(12)[None] < got.lengths[:, None]
  np.testing.assert_allclose(jnp.where(mask, gathered, 0), got.token_logprobs, atol=1e-5)
