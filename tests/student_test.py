"""`Student`: batched text generation and scoring, sharded over the data axis."""

import jax
import numpy as np

from tests.conftest import init_params, teacher_forced_logps
from tinythinker_jax import decoding, partitioning, weights
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning.chains import Sampling
from tinythinker_jax.student import Student

PROMPTS = ["abc", "hello there", "x", "a longer prompt than the others", "qq", "zz", "k"]


def _student(config, params, devices, **kwargs):
  mesh = partitioning.create_mesh(devices=jax.devices()[:devices])
  codec = vocabularies.TextCodec("byte", extra_ids=0)
  return Student(config, params, codec, partitioner=partitioning.Partitioner(mesh),
                 **kwargs)


def _config(tiny_config):
  return tiny_config.replace(vocab_size=260)


def test_greedy_text_equals_direct_decoding_on_any_mesh(tiny_config):
  config = _config(tiny_config)
  params = jax.device_get(init_params(config, 0))
  one = _student(config, params, 1, batch_size=4, max_input_length=64,
                 max_decode_length=6)
  eight = _student(config, params, 8, batch_size=8, max_input_length=64,
                   max_decode_length=6)
  a = one.generate(PROMPTS, Sampling())
  b = eight.generate(PROMPTS, Sampling())
  assert [g[0].text for g in a] == [g[0].text for g in b]
  np.testing.assert_allclose([g[0].logprob for g in a], [g[0].logprob for g in b],
                             rtol=1e-5)
  # The reference: greedy_decode on each prompt alone, unpadded, no batching.
  codec = vocabularies.TextCodec("byte", extra_ids=0)
  decode = jax.jit(lambda p, e: decoding.greedy_decode(t5.T5(config), p, e, max_length=6))
  for prompt, (generation,) in zip(PROMPTS, a):
    enc = np.array([codec.encode(prompt) + [1]], np.int32)
    out = decode(params, enc)
    n = int(out.lengths[0])
    assert generation.text == codec.decode(np.asarray(out.tokens[0, :n]))
    assert generation.num_tokens == n


def test_score_equals_a_teacher_forced_forward_pass(tiny_config):
  config = _config(tiny_config)
  params = jax.device_get(init_params(config, 1))
  student = _student(config, params, 8, batch_size=16, max_input_length=64,
                     max_decode_length=8)
  targets = ["so", "the answer is", "B.", "a much longer target than eight tokens"]
  scored = student.score(PROMPTS[:4], targets)
  codec = student.codec
  for prompt, target, result in zip(PROMPTS, targets, scored):
    tgt = codec.encode(target) + [1]
    expected = teacher_forced_logps(config, params, codec.encode(prompt) + [1], tgt)
    assert result["num_tokens"] == len(tgt)
    np.testing.assert_allclose(result["token_logprobs"], expected, rtol=1e-4, atol=1e-5)


def test_samples_are_a_function_of_the_seed(tiny_config):
  config = _config(tiny_config)
  params = jax.device_get(init_params(config, 1))
  student = _student(config, params, 8, batch_size=16, max_input_length=64,
                     max_decode_length=8)
  sampling = Sampling(temperature=1.0, num_samples=4)
  first = student.generate(PROMPTS[:5], sampling, seed=3)
  assert [len(s) for s in first] == [4] * 5
  texts = lambda out: [[g.text for g in s] for s in out]  # noqa: E731
  assert texts(student.generate(PROMPTS[:5], sampling, seed=3)) == texts(first)
  assert texts(student.generate(PROMPTS[:5], sampling, seed=4)) != texts(first)
  assert len({g.text for g in first[0]}) > 1  # the samples of one prompt differ


def test_long_inputs_keep_their_end(tiny_config):
  config = _config(tiny_config)
  params = jax.device_get(init_params(config, 2))
  student = _student(config, params, 1, batch_size=2, max_input_length=16,
                     max_decode_length=4)
  long_prompt = "x" * 40 + "Recall:"
  short = student.score([long_prompt[-15:]], ["ab"])
  truncated = student.score([long_prompt], ["ab"])
  assert student.truncated_inputs == 1
  np.testing.assert_allclose(short[0]["logprob"], truncated[0]["logprob"], rtol=1e-6)


def test_loading_restores_parameters_onto_the_mesh_by_the_rules(tiny_student, tmp_path):
  # A model dir (one-device run) and the HF folder exported from it, loaded for
  # a 4x2 FSDP mesh: every parameter arrives in the rules' shardings, with the
  # values written, and a checkpoint's optimizer state is never read.
  from tinythinker_jax.stages import export# pylint: disable=import-outside-toplevel
  model_dir = str(tiny_student / "model")
  host = weights.load(model_dir)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host.params))
  hf_dir = export.export_student(model_dir, str(tmp_path / "hf"))
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(4, 2),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  want = weights.param_shardings(host.config, partitioner)
  for path in (model_dir, hf_dir):
    placed = weights.load(path, partitioner=partitioner)
    for x, sharding, value in zip(jax.tree.leaves(placed.params), jax.tree.leaves(
        want, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)),
        jax.tree.leaves(host.params)):
      assert x.sharding == sharding
      np.testing.assert_array_equal(np.asarray(x), value)
  kernel = placed.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.shard_shape(kernel.shape) == (kernel.shape[0] // 4,
                                                       kernel.shape[1] // 2)
  # The parameters only: a checkpoint restores without its optimizer state.
  assert set(host.params) == {"encoder", "decoder", "token_embedder"}
