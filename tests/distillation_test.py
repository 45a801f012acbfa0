"""training/distillation.py: per-token divergences against hand-worked numbers and
against TRL's generalized JSD formula computed independently in PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinythinker_jax.training import distillation

torch = pytest.importorskip("torch")
F = torch.nn.functional

TEACHER = np.log([[[0.5, 0.25, 0.25]]])
STUDENT = np.log([[[0.25, 0.25, 0.5]]])


def test_forward_and_reverse_kl_by_hand():
  # KL(teacher || student) = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2; here the reverse
  # direction is the same number, and the mixture M = (0.375, 0.25, 0.375).
  forward = distillation.token_divergence(STUDENT, TEACHER, beta=0.0)
  reverse = distillation.token_divergence(STUDENT, TEACHER, beta=1.0)
  np.testing.assert_allclose(forward, [[0.25 * math.log(2)]], rtol=1e-6)
  np.testing.assert_allclose(reverse, [[0.25 * math.log(2)]], rtol=1e-6)
  m = np.array([0.375, 0.25, 0.375])
  kl = lambda p, q: float(np.sum(p * np.log(p / q)))  # noqa: E731
  expected = 0.5 * kl(np.exp(TEACHER[0, 0]), m) + 0.5 * kl(np.exp(STUDENT[0, 0]), m)
  np.testing.assert_allclose(distillation.token_divergence(STUDENT, TEACHER, beta=0.5),
                             [[expected]], rtol=1e-6)
  # A teacher that puts no mass on a token: 0 log 0 counts as 0.
  sharp = np.log(np.array([[[1.0, 1e-45, 1e-45]]], np.float32) + 0)
  assert np.isfinite(distillation.token_divergence(STUDENT, sharp, beta=0.0)).all()


def trl_generalized_jsd(student_logits, teacher_logits, beta, temperature):
  """TRL's GKD formula (beta 0: KL(teacher || student), 1: KL(student || teacher)),
  per token, in PyTorch."""
  s = F.log_softmax(student_logits / temperature, dim=-1)
  t = F.log_softmax(teacher_logits / temperature, dim=-1)
  if beta == 0:
    return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
  if beta == 1:
    return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
  b = torch.tensor(beta, dtype=s.dtype)
  mixture = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
  return (b * F.kl_div(mixture, t, reduction="none", log_target=True).sum(-1) +
          (1 - b) * F.kl_div(mixture, s, reduction="none", log_target=True).sum(-1))


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_trl_formula_in_pytorch(beta, temperature):
  rng = np.random.default_rng(0)
  student = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
  teacher = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
  ours = distillation.token_divergence(student, teacher, beta=beta, temperature=temperature)
  reference = trl_generalized_jsd(torch.tensor(student, dtype=torch.float64),
                                  torch.tensor(teacher, dtype=torch.float64), beta,
                                  temperature).numpy()
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
  # Gradients reach the student only; they equal PyTorch's.
  grad_student, grad_teacher = jax.grad(
      lambda s, t: distillation.token_divergence(s, t, beta=beta,
                                                 temperature=temperature).sum(),
      argnums=(0, 1))(student, teacher)
  assert not np.asarray(grad_teacher).any()
  s = torch.tensor(student, dtype=torch.float64, requires_grad=True)
  trl_generalized_jsd(s, torch.tensor(teacher, dtype=torch.float64), beta,
                      temperature).sum().backward()
  np.testing.assert_allclose(grad_student, s.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_topk_teacher_keeps_the_rest_of_its_mass_in_one_bucket():
  # Top-2 of the teacher (0.5, 0.25): the rest bucket holds 0.25; the student's
  # probabilities of those tokens (0.25, 0.25) leave it 0.5: the same three-way
  # distributions as the full-vocabulary example above.
  ids = np.array([[[0, 1]]])
  topk = TEACHER[..., :2]
  forward = distillation.topk_token_divergence(STUDENT, topk, ids, beta=0.0)
  np.testing.assert_allclose(forward, [[0.25 * math.log(2)]], rtol=1e-5)
  # With every token in the top-k, it is the full-vocabulary divergence.
  rng = np.random.default_rng(1)
  student = rng.normal(size=(2, 3, 7)).astype(np.float32)
  teacher = rng.normal(size=(2, 3, 7)).astype(np.float32)
  order = np.argsort(-teacher, axis=-1)
  log_teacher = np.asarray(jax.nn.log_softmax(teacher, -1))
  for beta in (0.0, 0.5, 1.0):
    np.testing.assert_allclose(
        distillation.topk_token_divergence(
            student, np.take_along_axis(log_teacher, order, -1), order, beta=beta),
        distillation.token_divergence(student, teacher, beta=beta), rtol=1e-4, atol=1e-5)


def test_masked_sum_and_errors():
  divergence = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  weights = jnp.array([[1, 1, 0], [1, 0, 0]])
  assert tuple(map(float, distillation.masked_sum(divergence, weights))) == (7.0, 3.0)
  with pytest.raises(ValueError, match="beta"):
    distillation.token_divergence(STUDENT, TEACHER, beta=1.5)
  with pytest.raises(ValueError, match="same vocabulary"):
    distillation.token_divergence(STUDENT, TEACHER[..., :2], beta=0.5)
