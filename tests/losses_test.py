"""Cross-entropy with z-loss and label smoothing against a hand-written numpy loss."""

import numpy as np
import pytest

from tinythinker_jax.training import losses


def numpy_loss(logits, targets, weights, label_smoothing, z_loss):
  logits = logits.astype(np.float64)
  vocab = logits.shape[-1]
  log_z = np.log(np.exp(logits).sum(-1))
  log_probs = logits - log_z[..., None]
  total = total_z = 0.0
  for idx in np.ndindex(targets.shape):
    q = np.full(vocab, label_smoothing / (vocab - 1))
    q[targets[idx]] = 1 - label_smoothing
    # KL(q || p) = cross-entropy minus the entropy of q: zero for a perfect model.
    entropy = -sum(v * np.log(v) for v in q if v > 0)
    token = -(q * log_probs[idx]).sum() - entropy + z_loss * log_z[idx] ** 2
    total += weights[idx] * token
    total_z += weights[idx] * z_loss * log_z[idx] ** 2
  return total, total_z


@pytest.mark.parametrize("label_smoothing,z_loss", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4),
                                                    (0.2, 1e-2)])
def test_weighted_cross_entropy_matches_numpy(label_smoothing, z_loss):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, (3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  total, total_z, weight_sum = losses.compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss)
  ref_total, ref_z = numpy_loss(logits, targets, weights, label_smoothing, z_loss)
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
  np.testing.assert_allclose(float(total_z), ref_z, rtol=1e-5, atol=1e-9)
  assert float(weight_sum) == weights.sum()
  normalized, _, _ = losses.compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss,
      loss_normalizing_factor=4.0)
  np.testing.assert_allclose(float(normalized), ref_total / 4.0, rtol=1e-5)


def _autodiff_cross_entropy(logits, targets, confidence, z_loss):
  """The same loss from jax primitives, differentiated by JAX (no custom VJP)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  vocab = logits.shape[-1]
  low = (1.0 - confidence) / (vocab - 1)
  soft = jnp.where(jax.nn.one_hot(targets, vocab) > 0, confidence, low)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  z_term = z_loss * jnp.square(log_z)
  return log_z - jnp.sum(soft * logits, axis=-1) + z_term, z_term


@pytest.mark.parametrize("confidence,z_loss", [(1.0, 0.0), (0.9, 0.0), (1.0, 1e-2),
                                               (0.8, 1e-2)])
def test_cross_entropy_gradient_matches_autodiff(confidence, z_loss):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 13)).astype(np.float32) * 3)
  targets = jnp.asarray(rng.integers(0, 13, (2, 4)))
  w_loss = jnp.asarray(rng.random((2, 4)).astype(np.float32))
  w_z = jnp.asarray(rng.random((2, 4)).astype(np.float32))

  def objective(fn):
    def f(x):
      loss, z_term = fn(x)
      return jnp.sum(loss * w_loss) + jnp.sum(z_term * w_z)
    return f

  ours = objective(lambda x: losses.cross_entropy_with_logits(
      x, targets, confidence=confidence, z_loss=z_loss))
  reference = objective(lambda x: _autodiff_cross_entropy(x, targets, confidence, z_loss))
  np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(ours))(logits),
                             jax.grad(reference)(logits), rtol=1e-4, atol=1e-6)
