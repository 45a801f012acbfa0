"""Compute accounting: budgets turned into steps, sampling FLOPs, shard totals."""

import json

import jax
import numpy as np
import pytest

from tests.conftest import init_params
from tinythinker_jax import compute, partitioning, shards
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import arrays
from tinythinker_jax.models import flops
from tinythinker_jax.reasoning.chains import Sampling
from tinythinker_jax.student import Student
from tinythinker_jax.training import recipe


def _stream(directory, rows, input_length, target_length, seed):
  """Random token rows with random real lengths (zeros after them)."""
  rng = np.random.default_rng(seed)
  def padded(length):
    out = np.zeros((rows, length), np.int32)
    for i, n in enumerate(rng.integers(1, length + 1, rows)):
      out[i, :n] = rng.integers(2, 50, n)
    return out
  targets = padded(target_length)
  arrays.write_features(directory, {
      "encoder_input_tokens": padded(input_length), "decoder_target_tokens": targets,
      "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
      "decoder_loss_weights": (targets > 0).astype(np.int32)})
  return arrays.ArrayDataset(directory)


def test_budgets_become_the_steps_that_spend_them(tiny_config, tmp_path):
  streams = {"recall": _stream(tmp_path / "r", 30, 12, 6, 0),
             "analyze": _stream(tmp_path / "a", 50, 16, 4, 1)}
  schedule = arrays.InterleavedSchedule(("recall", "analyze"), (2, 3))
  source = arrays.BatchSource(streams, 8, seed=3, schedule=schedule)
  step_flops = lambda shapes: flops.batch_step_flops(tiny_config, shapes)  # noqa: E731

  # Brute force: walk the steps, costing each batch as the trainer does.
  spent_flops, spent_tokens = [0.0], [0.0]
  for step in range(200):
    batch = source(step)
    shapes = {k: v.shape for k, v in batch.items()}
    spent_flops.append(spent_flops[-1] + step_flops(shapes))
    spent_tokens.append(spent_tokens[-1] + sum(
        np.count_nonzero(batch[k]) for k in ("encoder_input_tokens", "decoder_target_tokens")))
  for budget in (1.0, 3.5e7, spent_flops[17], spent_flops[17] + 1, spent_flops[120]):
    expected = next(s for s, f in enumerate(spent_flops) if f >= budget)
    assert recipe.steps_for_budget(source, step_flops, "train_flops", budget) == expected
  for budget in (5, spent_tokens[33], spent_tokens[33] + 1, spent_tokens[150]):
    expected = next(s for s, t in enumerate(spent_tokens) if t >= budget)
    assert recipe.steps_for_budget(source, step_flops, "train_tokens", budget) == expected

  settings = recipe.TrainSettings(batch_size=8, train_flops=spent_flops[40])
  assert settings.steps_for(80, budget_steps=lambda name, value: recipe.steps_for_budget(
      source, step_flops, name, value)) == 40
  with pytest.raises(ValueError, match="set exactly one of train_steps, num_epochs, "
                                       "train_flops, train_tokens"):
    recipe.TrainSettings(train_steps=3, train_tokens=10.0).steps_for(80)
  with pytest.raises(ValueError, match="a budget must be positive"):
    recipe.steps_for_budget(source, step_flops, "train_flops", 0)


def test_sampling_counts_the_work_of_every_call_as_training_does(tiny_config):
  config = tiny_config.replace(vocab_size=260)
  codec = vocabularies.TextCodec("byte", extra_ids=0)
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  student = Student(config, jax.device_get(init_params(config, 0)), codec,
                    partitioner=partitioning.Partitioner(mesh), batch_size=8,
                    max_input_length=32, max_decode_length=5)
  prompts = ["abc", "a longer prompt", "x"]
  generated = student.generate(prompts, Sampling(temperature=1.0, num_samples=2), seed=1)
  # One call of 4 input rows (8 rows / 2 samples; one only fills the batch), each
  # encoded at the call's padded length (16: the smallest bucket holding them);
  # then 8 sampled rows decoded for as many steps as the call ran: at least the
  # longest real row's, at most max_decode_length (a padding row may run longer).
  length, rows = 16, 4
  longest = max(g.num_tokens for gens in generated for g in gens)
  spent = student.compute.sample_flops
  encode = rows * flops.encode_flops(config, length)
  assert spent in [encode + 2 * rows * flops.decode_steps_flops(config, length, steps)
                   for steps in range(longest, 6)]
  # More than the useful work alone (each real row's own tokens).
  useful = sum(flops.encode_flops(config, length) +
               sum(flops.decode_steps_flops(config, length, g.num_tokens) for g in gens)
               for gens in generated)
  assert spent > useful
  assert student.compute.sample_tokens == sum(
      len(codec.encode(p)) + 1 + sum(g.num_tokens for g in gens)
      for p, gens in zip(prompts, generated))
  # decode_steps_flops written out: step t attends to t + 1 decoder positions.
  h = config.num_heads * config.head_dim
  weights = flops.matmul_weights(config)
  assert flops.decode_steps_flops(config, 7, 3) == (
      2 * weights.per_target_token * 3 +
      4 * h * config.num_decoder_layers * ((1 + 7) + (2 + 7) + (3 + 7)))
  before = student.compute.sample_flops
  student.score(["abc"], ["de"])  # input and target at their buckets (16 and 5),
  # over the call's 8 rows
  assert student.compute.sample_flops - before == flops.forward_flops(config, 8, 16, 5)


def test_shards_record_what_each_shard_spent(tmp_path):
  spent = compute.Compute()

  def work(items, index):
    spent.sample_flops += 10.0 * len(items)
    spent.sample_tokens += 1.0
    return [{"item": i} for i in items]

  kwargs = dict(directory=tmp_path, name="q", shard_size=2, progress=False,
                compute=lambda: spent)
  shards.run_sharded(list(range(5)), work, **kwargs)
  total = shards.compute_of(tmp_path, "q")
  assert (total.sample_flops, total.sample_tokens) == (50.0, 3.0)
  # A resumed job counts a finished shard once (it is not run again).
  (tmp_path / "q-00002-of-00003.jsonl").unlink()
  shards.run_sharded(list(range(5)), work, **kwargs)
  assert shards.compute_of(tmp_path, "q").sample_flops == 50.0
  assert json.loads((tmp_path / "q-00000-of-00003.compute.json").read_text())[
      "sample_flops"] == 20.0
  assert (compute.Compute(train_flops=1, sample_flops=2) +
          compute.Compute(train_flops=3)).total_flops == 6
