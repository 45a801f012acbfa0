"""training/distillation.py: per-token divergences against hand-worked numbers and
against TRL's generalized JSD formula computed independently in PyTorch."""

import math

import jax
import flax.linen as nn
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


# ------------------------------------------------- the objective in the trainer

from tests.trainer_test import copy_task  # noqa: E402
from tinythinker_jax import compute, errors, partitioning  # noqa: E402
from tinythinker_jax.tokenizers import vocabularies  # noqa: E402
from tinythinker_jax.families.decoder_only import DecoderOnlyModel  # noqa: E402
from tinythinker_jax.families.encoder_decoder import EncoderDecoderModel  # noqa: E402
from tinythinker_jax.models import llama, t5  # noqa: E402
from tinythinker_jax.training import optimizers, trainer  # noqa: E402
from tinythinker_jax.training import step as step_lib  # noqa: E402

ROWS = 24  # the tokenizer's ids; both tables have more rows


def llama_model(width, layers, vocab):
  return DecoderOnlyModel(llama.LlamaConfig(
      vocab_size=vocab, emb_dim=width, num_heads=4, num_kv_heads=2, head_dim=width // 4,
      mlp_dim=2 * width, num_layers=layers, max_position_embeddings=64))


def t5_model(width, layers, vocab):
  return EncoderDecoderModel(t5.T5Config(
      vocab_size=vocab, emb_dim=width, num_heads=2, head_dim=width // 2, mlp_dim=2 * width,
      num_encoder_layers=layers, num_decoder_layers=layers, dropout_rate=0.0,
      mlp_activations=("gelu", "linear"), logits_via_embedding=False))


FAMILIES = {"llama": llama_model, "t5": t5_model}


def pair(family):
  """(student, teacher, their parameters): a narrower student, and a teacher with
  more embedding rows, both over ROWS tokenizer ids."""
  student, teacher = FAMILIES[family](16, 1, ROWS + 8), FAMILIES[family](32, 2, ROWS + 40)
  init = lambda m, s: jax.jit(lambda r: nn.unbox(m.init_params(r)))(jax.random.key(s))  # noqa: E731
  return student, teacher, init(student, 0), init(teacher, 1)


def batch_of(rows=3, prompt=5, length=6, seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, ROWS, (rows, prompt)).astype(np.int32)
  inputs[0, 3:] = 0
  targets = rng.integers(2, ROWS, (rows, length)).astype(np.int32)
  targets[0, 4], targets[0, 5:] = 1, 0
  targets[1, 2], targets[1, 3:] = 1, 0
  return {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_input_tokens": np.asarray(step_lib.shift_right(targets)),
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def reference_loss(student, teacher, params, teacher_params, batch, beta, temperature,
                   supervised_weight):
  """Sum over completion tokens of TRL's JSD (PyTorch) on the tokenizer's rows,
  plus the weighted cross-entropy of the student over its whole table."""
  s = torch.tensor(np.asarray(jax.jit(student.logits)(params, batch)), dtype=torch.float64)
  t = torch.tensor(np.asarray(jax.jit(teacher.logits)(teacher_params, batch)),
                   dtype=torch.float64)
  mask = torch.tensor(batch["decoder_target_tokens"] > 0, dtype=torch.float64)
  jsd = trl_generalized_jsd(s[..., :ROWS], t[..., :ROWS], beta, temperature)
  ce = F.cross_entropy(s.reshape(-1, s.shape[-1]),
                       torch.tensor(batch["decoder_target_tokens"].reshape(-1)).long(),
                       reduction="none").reshape(mask.shape)
  return float((jsd * mask).sum() + supervised_weight * (ce * mask).sum()), float(mask.sum())


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_objective_matches_pytorch_over_the_tokenizers_rows(family):
  student, teacher, params, teacher_params = pair(family)
  batch = batch_of()
  for beta, temperature, weight in ((0.5, 1.0, 0.0), (1.0, 2.0, 0.3), (0.0, 1.0, 1.0)):
    objective = distillation.DistillationObjective(
        student, teacher, ROWS, distillation.DistillSettings(
            beta=beta, temperature=temperature, supervised_weight=weight))
    loss_sums = jax.jit(objective.loss_sums)
    loss, sums = loss_sums(params, batch,
                           aux={"teacher": teacher_params, "on_policy": np.bool_(False)})
    expected, tokens = reference_loss(student, teacher, params, teacher_params, batch,
                                      beta, temperature, weight)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-4)
    assert float(sums["weight_sum"]) == tokens
    # On an on-policy step the targets are the student's own: no cross-entropy.
    on_policy, _ = loss_sums(params, batch,
                             aux={"teacher": teacher_params, "on_policy": np.bool_(True)})
    np.testing.assert_allclose(float(on_policy), reference_loss(
        student, teacher, params, teacher_params, batch, beta, temperature, 0.0)[0],
        rtol=2e-4)


def ragged_topk(rows, length, seed=0):
  """Top-k teacher features over ROWS ids: distinct ids per position, 1 to 3 of
  them (empty slots at -inf), log-probs of a random distribution's top tokens."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((rows, length, 3), np.int32)
  lps = np.full((rows, length, 3), -np.inf, np.float32)
  for r in range(rows):
    for t in range(length):
      n = rng.integers(1, 4)
      logp = np.asarray(jax.nn.log_softmax(rng.normal(size=ROWS) * 2))
      top = np.argsort(-logp)[:n]
      ids[r, t, :n], lps[r, t, :n] = top, logp[top]
  return ids, lps


def torch_bucket_jsd(student_logits, ids, lps, beta):
  """Each position's k+1 outcomes (its non-empty top tokens and the rest), both
  sides, then TRL's formula on them; `student_logits` a float64 tensor."""
  log_student = F.log_softmax(student_logits, dim=-1)
  out = torch.zeros(ids.shape[:2], dtype=torch.float64)
  for r in range(ids.shape[0]):
    for t in range(ids.shape[1]):
      valid = np.isfinite(lps[r, t])
      s = log_student[r, t, torch.tensor(ids[r, t][valid]).long()]
      q = torch.tensor(lps[r, t][valid], dtype=torch.float64)
      with_rest = lambda x: torch.cat([x, torch.log1p(-x.exp().sum()).reshape(1)])  # noqa: E731
      out[r, t] = trl_generalized_jsd(with_rest(s)[None], with_rest(q)[None], beta, 1.0)[0]
  return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_topk_divergence_with_empty_slots_matches_pytorch(beta):
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 4, ROWS)).astype(np.float32) * 2
  ids, lps = ragged_topk(2, 4)
  ours = distillation.topk_token_divergence(logits, lps, ids, beta=beta)
  s = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
  reference = torch_bucket_jsd(s, ids, lps, beta)
  np.testing.assert_allclose(ours, reference.detach().numpy(), rtol=1e-4, atol=1e-6)
  reference.sum().backward()
  grad = jax.grad(lambda x: distillation.topk_token_divergence(x, lps, ids, beta=beta).sum())(
      logits)
  assert np.isfinite(grad).all()
  np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_objective_with_a_stored_topk_teacher_matches_pytorch(family):
  student, _, params, _ = pair(family)
  batch = batch_of()
  ids, lps = ragged_topk(*batch["decoder_target_tokens"].shape, seed=1)
  covered = np.ones(ids.shape[:2], np.float32)
  covered[2, :2] = 0  # positions no teacher chain covers
  batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=lps, teacher_topk_weights=covered)
  objective = distillation.DistillationObjective(
      student, None, ROWS, distillation.DistillSettings(beta=0.5, supervised_weight=0.5))
  loss, sums = jax.jit(objective.loss_sums)(params, batch, aux=objective.step_aux(0))
  s = torch.tensor(np.asarray(jax.jit(student.logits)(params, batch)), dtype=torch.float64)
  mask = torch.tensor(batch["decoder_target_tokens"] > 0, dtype=torch.float64)
  jsd = torch_bucket_jsd(s[..., :ROWS], ids, lps, 0.5)
  ce = F.cross_entropy(s.reshape(-1, s.shape[-1]),
                       torch.tensor(batch["decoder_target_tokens"].reshape(-1)).long(),
                       reduction="none").reshape(mask.shape)
  expected = (jsd * mask * torch.tensor(covered)).sum() + 0.5 * (ce * mask).sum()
  np.testing.assert_allclose(float(loss), float(expected), rtol=2e-4)
  assert objective.extra_step_flops({"encoder_input_tokens": (3, 5),
                                     "decoder_target_tokens": (3, 6)}, {}) == 0
  with pytest.raises(errors.UserError, match="TEACHER_TOPK_CACHES"):
    objective.loss_sums(params, batch_of(), aux={})
  with pytest.raises(errors.UserError, match="on-policy"):
    distillation.DistillationObjective(student, None, ROWS, distillation.DistillSettings(
        on_policy_fraction=0.5))


def brute_force_greedy(model, params, inputs, length):
  """Greedy completions over the tokenizer's ids by full teacher-forced forward
  passes, one token at a time (no cache): the reference for the sampler's
  near-zero temperature."""
  tokens = np.zeros((inputs.shape[0], length), np.int32)
  done = np.zeros(inputs.shape[0], bool)
  for t in range(length):
    batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": tokens,
             "decoder_input_tokens": np.asarray(step_lib.shift_right(tokens))}
    logits = np.array(jax.jit(model.logits)(params, batch))[:, t]
    logits[:, 0], logits[:, ROWS:] = -np.inf, -np.inf  # the tokenizer's real ids only
    choice = logits.argmax(-1)
    tokens[:, t] = np.where(done, 0, choice)
    done |= choice == 1
  return tokens


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_on_policy_step_scores_the_students_own_chain(family):
  student, teacher, params, teacher_params = pair(family)
  batch = batch_of(seed=3)
  objective = distillation.DistillationObjective(
      student, teacher, ROWS, distillation.DistillSettings(
          beta=1.0, on_policy_fraction=1.0, sample_temperature=1e-4))
  optimizer = optimizers.make_optimizer("adamw", 1e-3)
  step = jax.jit(step_lib.make_train_step(objective, optimizer))
  state = step_lib.TrainState.create(params, optimizer)
  _, metrics = step(state, batch, jax.random.key(0),
                    {"teacher": teacher_params, "on_policy": np.bool_(True)})
  own = brute_force_greedy(student, params, batch["encoder_input_tokens"], 6)
  sampled = dict(batch, decoder_target_tokens=own,
                 decoder_input_tokens=np.asarray(step_lib.shift_right(own)),
                 decoder_loss_weights=(own > 0).astype(np.int32))
  expected, tokens = reference_loss(student, teacher, params, teacher_params, sampled,
                                    1.0, 1.0, 0.0)
  assert float(metrics["target_tokens"]) == tokens
  np.testing.assert_allclose(float(metrics["loss"]), expected / tokens, rtol=2e-4)
  assert float(metrics["on_policy"]) == 1.0
  # Off-policy, the same step reads the batch's own targets.
  _, metrics = step(state, batch, jax.random.key(0),
                    {"teacher": teacher_params, "on_policy": np.bool_(False)})
  assert float(metrics["target_tokens"]) == float((batch["decoder_target_tokens"] > 0).sum())


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_samples_keep_to_the_tokenizers_ids(family):
  student, _, params, _ = pair(family)
  inputs = batch_of(rows=3)["encoder_input_tokens"]
  def draw(vocab_rows):
    return np.asarray(jax.jit(lambda p, x, r: student.decode(
        p, x, max_length=12, rng=r, temperature=50.0, num_samples=8,
        vocab_rows=vocab_rows).tokens)(params, inputs, jax.random.key(0)))
  hot = draw(ROWS)
  assert hot.max() < ROWS
  # Before a row's end (EOS) no token is padding.
  for row in hot:
    end = list(row).index(1) if 1 in row else len(row)
    assert (row[:end] > 0).all()
  assert draw(None).max() >= ROWS  # without the limit the padded rows are drawn at this heat


def test_on_policy_steps_are_drawn_per_step_from_the_seed():
  draws = [distillation.on_policy_at(s, 0.3, seed=5) for s in range(2000)]
  assert abs(np.mean(draws) - 0.3) < 0.04
  assert draws == [distillation.on_policy_at(s, 0.3, seed=5) for s in range(2000)]
  assert draws != [distillation.on_policy_at(s, 0.3, seed=6) for s in range(2000)]
  assert all(distillation.on_policy_at(s, 1.0, 0) for s in range(10))
  assert not any(distillation.on_policy_at(s, 0.0, 0) for s in range(10))
  with pytest.raises(errors.UserError, match="on_policy_fraction"):
    distillation.DistillSettings(on_policy_fraction=1.5)


def train_distilled(model_dir, *, data=1, model=1, param_dims=1, steps=6, fraction=0.5):
  student = llama_model(16, 1, 32)
  teacher = llama_model(32, 2, 48)
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(data, model),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=param_dims))
  teacher_params, shardings = partitioner.init(teacher.init_params, jax.random.key(1))
  objective = distillation.DistillationObjective(
      student, teacher, 32, distillation.DistillSettings(on_policy_fraction=fraction),
      seed=3)
  result = trainer.train(
      model=student, objective=objective,
      optimizer=optimizers.make_optimizer("adamw", 3e-3, param_axes=(
          optimizers.param_logical_axes(student.abstract_params()))),
      partitioner=partitioner, batch_fn=copy_task(32, 8), global_batch_size=8,
      train_steps=steps, model_dir=str(model_dir), log_every=1, progress=False,
      checkpoint=trainer.CheckpointSettings(save_every=1000, keep=1, asynchronous=False),
      frozen={"teacher": (teacher_params, shardings)})
  return result, student, teacher, objective


def test_teacher_on_an_fsdp_mesh_and_its_flops_are_counted(tmp_path):
  one, student, teacher, objective = train_distilled(tmp_path / "one")
  mesh, *_ = train_distilled(tmp_path / "mesh", data=2, model=4, param_dims=2)
  np.testing.assert_allclose(mesh.last_metrics["loss"], one.last_metrics["loss"],
                             rtol=2e-3)
  # Every step: the student's training step and the teacher's forward pass; an
  # on-policy step also reads each prompt and decodes 9 tokens.
  batch, prompt, length = 8, 8, 9
  drawn = [distillation.on_policy_at(s, 0.5, 3) for s in range(6)]
  assert 0 < sum(drawn) < 6  # both kinds of step ran
  shapes = {"encoder_input_tokens": (batch, prompt), "decoder_target_tokens": (batch, length)}
  expected = sum(
      student.train_step_flops(shapes) + teacher.forward_flops(batch, prompt, length) +
      (batch * (student.encode_flops(prompt) + student.decode_steps_flops(prompt, length))
       if on else 0) for on in drawn)
  assert compute.read(tmp_path / "one").train_flops == expected


def test_check_same_tokenizer(tmp_path):
  texts = [f"word{i} other{i % 7} thing" for i in range(200)]
  a = vocabularies.train_sentencepiece(texts, 64, str(tmp_path / "a"), model_type="word",
                                       hard_vocab_limit=False)
  b = vocabularies.train_sentencepiece(texts[::-1] + ["zebra"] * 50, 64, str(tmp_path / "b"),
                                       model_type="word", hard_vocab_limit=False)
  assert vocabularies.check_same_tokenizer(a, a, "X") == len(vocabularies.token_table(a))
  with pytest.raises(errors.UserError, match=r"X: the teacher's tokenizer .* id \d+ is"):
    vocabularies.check_same_tokenizer(b, a, "X")
  with pytest.raises(errors.UserError, match="names no tokenizer"):
    vocabularies.check_same_tokenizer("", a, "X")


@pytest.mark.parametrize("on_policy", [False, True])
def test_microbatched_distillation_step_equals_the_whole_batch(on_policy):
  student, teacher, params, teacher_params = pair("llama")
  batch = batch_of(rows=4, seed=5)
  objective = distillation.DistillationObjective(
      student, teacher, ROWS, distillation.DistillSettings(
          beta=0.3, supervised_weight=0.5, on_policy_fraction=0.5))
  optimizer = optimizers.make_optimizer("adamw", 1e-2)
  state = step_lib.TrainState.create(params, optimizer)
  aux = {"teacher": teacher_params, "on_policy": np.bool_(on_policy)}
  results = [jax.jit(step_lib.make_train_step(objective, optimizer, num_microbatches=n))(
      state, batch, jax.random.key(0), aux) for n in (1, 2)]
  (whole, whole_metrics), (micro, micro_metrics) = results
  np.testing.assert_allclose(micro_metrics["loss"], whole_metrics["loss"], rtol=1e-5)
  # The samples are drawn once for the whole batch, before it is split.
  assert float(micro_metrics["target_tokens"]) == float(whole_metrics["target_tokens"])
  assert float(micro_metrics["on_policy"]) == float(whole_metrics["on_policy"]) == on_policy
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(micro.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_flops_budget_counts_each_steps_extra_flops():
  """`steps_for_budget` with an objective's extra FLOPs: the first step count
  whose steps (base + that step's extra) reach the budget."""
  from tinythinker_jax.training import recipe

  class Source:  # one stream, its batch shapes: what steps_for_budget reads
    schedule = None
    batch_size = 4
    datasets = {"only": type("D", (), {"batch_shapes": staticmethod(
        lambda batch: {"encoder_input_tokens": (batch, 8)})})()}

  extra = lambda shapes, step: 50.0 if step % 3 == 0 else 0.0  # noqa: E731
  for budget in (1.0, 100.0, 101.0, 350.0, 1234.0):
    steps = recipe.steps_for_budget(Source(), lambda shapes: 100, "train_flops", budget,
                                    extra_flops=extra)
    spent = [100 + extra(None, s) for s in range(steps)]
    assert sum(spent) >= budget > sum(spent[:-1])
