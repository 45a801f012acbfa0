"""DPO/RPO/IPO losses against a hand computation, and through the trainer's step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import full_and_microbatched, init_params, jitted_forward
from tinythinker_jax.models import t5
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.training import dpo
from tinythinker_jax.training import step as step_lib


def _batch(rng, vocab, batch=4, enc_len=6, tgt_len=5):
  enc = rng.integers(3, vocab, (batch, enc_len)).astype(np.int32)
  enc[:, -2:] = 0
  chosen = rng.integers(3, vocab, (batch, tgt_len)).astype(np.int32)
  rejected = rng.integers(3, vocab, (batch, tgt_len)).astype(np.int32)
  for row, n in enumerate([5, 3, 4, 2][:batch]):  # different lengths, EOS last
    chosen[row, n - 1], chosen[row, n:] = 1, 0
  for row, n in enumerate([2, 5, 3, 4][:batch]):
    rejected[row, n - 1], rejected[row, n:] = 1, 0
  return {"encoder_input_tokens": enc, "chosen_target_tokens": chosen,
          "rejected_target_tokens": rejected,
          "reference_chosen_logps": rng.normal(-8, 2, batch).astype(np.float32),
          "reference_rejected_logps": rng.normal(-8, 2, batch).astype(np.float32)}


def _hand_logps(module, params, enc, targets):
  """Per-sequence log-likelihoods with one forward pass per row and Python sums."""
  out = []
  for row in range(len(enc)):
    n = int((targets[row] > 0).sum())
    decoder_inputs = np.concatenate([[0], targets[row, :-1]])[None]
    logits = np.asarray(jitted_forward(module.config)(params, enc[row:row + 1], decoder_inputs),
                        np.float64)[0]
    total = 0.0
    for t in range(n):
      row_logits = logits[t]
      log_z = math.log(sum(math.exp(v - row_logits.max()) for v in row_logits)) + \
          row_logits.max()
      total += row_logits[targets[row, t]] - log_z
    out.append((total, n))
  return out


@pytest.mark.parametrize("loss_type,alpha,nll_normalization", [
    ("sigmoid", 0.5, "batch_tokens"), ("sigmoid", 0.5, "sequence"),
    ("sigmoid", 0.0, "batch_tokens"), ("ipo", 0.0, "batch_tokens")])
def test_preference_loss_matches_a_hand_computation(tiny_config, loss_type, alpha,
                                                    nll_normalization):
  module = t5.T5(tiny_config)
  params = init_params(tiny_config, 1)
  batch = _batch(np.random.default_rng(0), tiny_config.vocab_size)
  beta = 0.5
  model = dpo.PreferenceObjective(EncoderDecoderModel(module.config), beta=beta, alpha=alpha, loss_type=loss_type,
                              nll_normalization=nll_normalization)
  loss, metrics = jax.jit(lambda p, b: step_lib.mean_loss(model, p, b))(params, batch)

  chosen = _hand_logps(module, params, batch["encoder_input_tokens"],
                       batch["chosen_target_tokens"])
  rejected = _hand_logps(module, params, batch["encoder_input_tokens"],
                         batch["rejected_target_tokens"])
  prefs, per_sequence_nll, correct = [], [], 0
  for i, ((pc, nc), (pr, nr)) in enumerate(zip(chosen, rejected)):
    rc, rr = batch["reference_chosen_logps"][i], batch["reference_rejected_logps"][i]
    if loss_type == "sigmoid":
      h = (pc - rc) - (pr - rr)
      prefs.append(math.log(1 + math.exp(-beta * h)))  # -log sigmoid(beta h)
    else:  # TRL's IPO: log-probabilities averaged over each sequence's tokens
      h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
      prefs.append((h - 1 / (2 * beta)) ** 2)
    per_sequence_nll.append(-pc / nc)
    correct += h > 0
  if nll_normalization == "batch_tokens":  # TRL 0.9.6: over all chosen tokens
    nll = -sum(pc for pc, _ in chosen) / sum(nc for _, nc in chosen)
  else:
    nll = np.mean(per_sequence_nll)
  np.testing.assert_allclose(float(loss), np.mean(prefs) + alpha * nll, rtol=2e-5)
  summary = model.metrics(metrics)
  assert float(summary["accuracy"]) == correct / len(prefs)
  np.testing.assert_allclose(float(summary["chosen_logp"]),
                             np.mean([pc for pc, _ in chosen]), rtol=1e-5)
  np.testing.assert_allclose(float(summary["rejected_logp"]),
                             np.mean([pr for pr, _ in rejected]), rtol=1e-5)


def test_padding_pairs_weigh_nothing(tiny_config):
  module = t5.T5(tiny_config)
  params = init_params(tiny_config, 2)
  batch = _batch(np.random.default_rng(1), tiny_config.vocab_size)
  model = dpo.PreferenceObjective(EncoderDecoderModel(module.config))
  first_two = {k: v[:2] for k, v in batch.items()}
  weighted = dict(batch, pair_weights=np.array([1, 1, 0, 0], np.float32))
  loss = jax.jit(lambda p, b: step_lib.mean_loss(model, p, b)[0])
  a, b = loss(params, first_two), loss(params, weighted)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_dpo_steps_raise_the_margin_and_microbatches_agree(tiny_config):
  """The phase-1 train step, unchanged, optimises the preference model."""
  module = t5.T5(tiny_config)
  params = init_params(tiny_config, 3)
  batch = _batch(np.random.default_rng(2), tiny_config.vocab_size)
  model = dpo.PreferenceObjective(EncoderDecoderModel(module.config), beta=0.5, alpha=0.0)
  # RPO's batch-token NLL is normalised by the whole batch's tokens, microbatched too.
  rpo = dpo.PreferenceObjective(EncoderDecoderModel(module.config), beta=0.5, alpha=0.5)
  _, (_, m_one), (_, m_two) = full_and_microbatched(rpo, optax.sgd(0.1), params, batch)
  np.testing.assert_allclose(float(m_two["loss"]), float(m_one["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m_two["grad_norm"]), float(m_one["grad_norm"]),
                             rtol=1e-5)
  # The reference is the initial policy, so the starting margin is exactly 0.
  pc, _, pr, _, _ = model.policy_logps(params, batch)
  batch["reference_chosen_logps"] = np.asarray(pc)
  batch["reference_rejected_logps"] = np.asarray(pr)
  full, (s_full, m_full), (s_micro, m_micro) = full_and_microbatched(
      model, optax.adam(1e-2), params, batch)
  np.testing.assert_allclose(float(m_full["loss"]), math.log(2), rtol=1e-5)
  np.testing.assert_allclose(float(m_full["loss"]), float(m_micro["loss"]), rtol=1e-5)
  # Adam's first step is ~lr * sign(g): a gradient entry near zero, summed in
  # another order, can move by a visible fraction of lr (1e-5 is 0.1% of it).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               s_full.params, s_micro.params)
  for _ in range(20):
    s_full, metrics = full(s_full, batch, jax.random.key(0))
  assert float(metrics["margin"]) > 0.5
  assert float(metrics["accuracy"]) == 1.0
  assert float(metrics["loss"]) < math.log(2) - 0.2


def test_unknown_loss_type_is_named():
  with pytest.raises(ValueError, match="loss_type='hinge'"):
    dpo.PreferenceObjective(EncoderDecoderModel(t5.T5Config()), loss_type="hinge")
  with pytest.raises(ValueError, match="loss_type"):
    dpo.preference_losses(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=1.0,
                          loss_type="x")
