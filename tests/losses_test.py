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
