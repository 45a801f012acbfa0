"""`T5Config.scan_layers`: the scanned model against the unscanned one.

The reference is the unrolled model (whose numerics the HF parity tests pin):
with the same weights converted by `scan_params`, a scanned model must give
the same logits, losses, gradients (converted back), decodes and HF files.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from tests.conftest import jitted_forward
from tinythinker_jax import decoding, errors, partitioning, weights
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.convert import load_hf_t5, save_hf_t5
from tinythinker_jax.models import t5
from tinythinker_jax.training import objectives
from tinythinker_jax.training import step as step_lib


def _tokens(seed, shape, vocab, pad_from=None):
  x = np.random.default_rng(seed).integers(2, vocab, shape).astype(np.int32)
  for row, start in (pad_from or {}).items():
    x[row, start:] = 0
  return jnp.asarray(x)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_trees_close(a, b, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol), a, b)


def _shapes(config):
  return jax.eval_shape(lambda: nn.unbox(t5.init_params(config, jax.random.key(0))))


def _random_params(config, seed, scale=0.3):
  """Host arrays of the model's shapes (distinct values: a mix-up of layers shows);
  cheaper than compiling an initialiser."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(s.dtype),
                      _shapes(config))


@pytest.fixture
def configs(tiny_config):
  # 3 decoder layers against 2 encoder layers: a mix-up of the two counts shows.
  plain = tiny_config.replace(num_decoder_layers=3)
  return plain, plain.replace(scan_layers=True)


def test_conversion_round_trip_is_exact(configs):
  plain, scanned = configs
  params = _random_params(plain, 0)
  stacked = t5.scan_params(params, scanned)
  # The scanned model's own tree: same paths, shapes and dtypes.
  expected = _shapes(scanned)
  assert jax.tree.structure(stacked) == jax.tree.structure(expected)
  jax.tree.map(lambda x, e: (x.shape, x.dtype) == (e.shape, e.dtype) or pytest.fail(
      f"{x.shape} {x.dtype} != {e.shape} {e.dtype}"), stacked, expected)
  assert stacked["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (3, 64, 32)
  np.testing.assert_array_equal(stacked["decoder"]["layers"]["mlp"]["wo"]["kernel"][2],
                                params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"])
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(stacked))  # stays on host
  _assert_trees_equal(t5.unscan_params(stacked, scanned), params)
  # And from the scanned model's own initialisation, the other way round.
  own = _random_params(scanned, 1)
  _assert_trees_equal(t5.scan_params(t5.unscan_params(own, scanned), scanned), own)
  # convert_params detects the layout it is given.
  assert t5.convert_params(stacked, scanned) is stacked
  _assert_trees_equal(t5.convert_params(stacked, plain), params)
  _assert_trees_equal(t5.convert_params(params, scanned), stacked)
  with pytest.raises(errors.UserError, match="encoder/layers_0 is missing"):
    t5.scan_params(stacked, scanned)
  with pytest.raises(errors.UserError, match="decoder/layers/.*needs 4 layers"):
    t5.unscan_params(stacked, scanned.replace(num_decoder_layers=4))


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_logits_loss_and_gradients_match_unscanned(configs, remat_policy):
  plain, scanned = (c.replace(remat_policy=remat_policy) for c in configs)
  params = _random_params(plain, 2)
  targets = _tokens(1, (4, 7), 128, {1: 3, 3: 5})
  batch = {"encoder_input_tokens": _tokens(0, (4, 9), 128, {0: 4, 2: 6}),
           "decoder_target_tokens": targets,
           "decoder_input_tokens": step_lib.shift_right(targets)}

  def outputs(config, p):
    model = objectives.TokenCrossEntropy(EncoderDecoderModel(config))
    logits = t5.T5(config).apply({"params": p}, batch["encoder_input_tokens"],
                                 batch["decoder_input_tokens"])
    (loss, sums), grads = jax.value_and_grad(model.loss_sums, has_aux=True)(p, batch)
    return logits, loss, sums["correct"], grads

  ref = jax.jit(lambda p: outputs(plain, p))(params)
  got = jax.jit(lambda p: outputs(scanned, p))(t5.scan_params(params, scanned))
  np.testing.assert_allclose(got[0], ref[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
  assert float(got[2]) == float(ref[2])
  assert t5.is_scanned(got[3])
  _assert_trees_close(t5.unscan_params(got[3], scanned), ref[3])


def test_cached_decoding_matches_unscanned(configs):
  """Greedy, sampled and beam decodes (all through the stacked KV cache)."""
  plain, scanned = (c.replace(vocab_size=16) for c in configs)
  params = _random_params(plain, 3)
  stacked = t5.scan_params(params, scanned)
  enc = _tokens(4, (3, 6), 16, {1: 3})

  def decodes(config, p):
    model = t5.T5(config)
    greedy = decoding.greedy_decode(model, p, enc, max_length=6)
    sampled = decoding.sample_decode(model, p, enc, jax.random.key(7), max_length=6,
                                     num_samples=2, temperature=1.0, top_k=8)
    beam = decoding.beam_search(model, p, enc, beam_size=3, max_length=5)
    return greedy, sampled, beam

  ref = jax.jit(lambda p: decodes(plain, p))(params)
  got = jax.jit(lambda p: decodes(scanned, p))(stacked)
  for r, g in zip(ref, got):
    np.testing.assert_array_equal(g.tokens, r.tokens)
    np.testing.assert_array_equal(g.lengths, r.lengths)
  for r, g in zip(ref[:2], got[:2]):
    np.testing.assert_allclose(g.token_logprobs, r.token_logprobs, atol=1e-5)
  np.testing.assert_allclose(got[2].scores, ref[2].scores, atol=1e-5)
  assert (np.asarray(ref[1].tokens) > 1).sum() > 10  # the samples are not all EOS
  # The cache is stacked per layer: [layers, batch, heads, length, kv].
  model = t5.T5(scanned)
  encoded = model.apply({"params": stacked}, enc, method=t5.T5.encode)
  cache = decoding.init_cache(model, stacked, encoded, enc, 6)
  assert cache["decoder"]["layers"]["self_attention"]["cached_key"].shape == (3, 3, 8, 6, 4)


def test_scanned_partition_specs_put_layers_first(configs):
  plain, scanned = configs
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
  boxed_plain = jax.eval_shape(lambda: t5.init_params(plain, jax.random.key(0)))
  boxed_scanned = jax.eval_shape(lambda: t5.init_params(scanned, jax.random.key(0)))
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(4, 2),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  # Every stacked leaf: layer 0's logical names and mesh axes, `layers` first.
  checked = 0
  for stack in ("encoder", "decoder"):
    for path, box in jax.tree_util.tree_flatten_with_path(
        boxed_scanned[stack]["layers"], is_leaf=is_box)[0]:
      layer0 = boxed_plain[stack]["layers_0"]
      for k in path:
        layer0 = layer0[k.key]
      assert box.names == ("layers",) + tuple(layer0.names)
      checked += 1
  assert checked == 9 + 14
  specs_plain = partitioner.param_specs(boxed_plain)
  specs_scanned = partitioner.param_specs(boxed_scanned)
  for stack in ("encoder", "decoder"):
    for path, spec in jax.tree_util.tree_flatten_with_path(
        specs_scanned[stack]["layers"],
        is_leaf=lambda x: isinstance(x, PartitionSpec))[0]:
      layer0 = specs_plain[stack]["layers_0"]
      for k in path:
        layer0 = layer0[k.key]
      assert spec == PartitionSpec(None, *layer0)
  # FSDP and model parallelism really shard the stacked kernels.
  assert specs_scanned["decoder"]["layers"]["mlp"]["wi_0"]["kernel"] == PartitionSpec(
      None, "data", "model")
  assert specs_scanned["token_embedder"] == specs_plain["token_embedder"]


def test_sharded_scanned_forward_matches_unscanned(configs):
  plain, scanned = configs
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(4, 2),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  params = _random_params(plain, 5)
  boxed = jax.eval_shape(lambda: t5.init_params(scanned, jax.random.key(0)))
  sharded = jax.device_put(t5.scan_params(params, scanned),
                           partitioner.param_shardings(boxed))
  assert sharded["encoder"]["layers"]["mlp"]["wo"]["kernel"].sharding.spec == \
      PartitionSpec(None, "model", "data")
  enc, dec = _tokens(6, (8, 9), 128, {0: 4}), _tokens(7, (8, 5), 128)
  forward = partitioner.partition(
      lambda p, e, d: t5.T5(scanned).apply({"params": p}, e, d))
  np.testing.assert_allclose(forward(sharded, enc, dec),
                             jitted_forward(plain)(params, enc, dec), rtol=1e-5, atol=1e-5)


def test_student_load_converts_between_layouts(configs, tmp_path):
  plain, scanned = configs
  params = _random_params(plain, 6)
  save_hf_t5(scanned, t5.scan_params(params, scanned), str(tmp_path / "hf"))
  for config, expected in ((scanned, t5.scan_params(params, scanned)), (plain, params)):
    loaded = weights.load(str(tmp_path / "hf"), model=config,
                          require_vocabulary=False)
    assert loaded.config.scan_layers == config.scan_layers
    _assert_trees_equal(loaded.params, expected)
  config, loaded = load_hf_t5(str(tmp_path / "hf"), scan_layers=True)
  assert config == scanned
  _assert_trees_equal(loaded, t5.scan_params(params, scanned))


def test_hugging_face_round_trip_of_a_scanned_model(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tests import hf_parity_test as hf
  model = hf.make_hf_model("v1.1-gated-gelu-untied", seed=3)
  model.save_pretrained(tmp_path / "hf")
  config, params = load_hf_t5(str(tmp_path / "hf"), scan_layers=True)
  assert config.scan_layers and t5.is_scanned(params)
  enc, dec = hf.random_batch(1)
  ours = np.asarray(jitted_forward(config)(params, jnp.asarray(enc), jnp.asarray(dec)))
  hf.assert_close_on_real_positions(ours,
                                    hf.hf_logits(model, enc, dec), dec)
  save_hf_t5(config, params, str(tmp_path / "ours"))
  with open(tmp_path / "ours" / "config.json") as f:
    assert "scan_layers" not in f.read()
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours")
  original = model.state_dict()
  for name, tensor in reloaded.state_dict().items():
    assert torch.equal(tensor, original[name]), name


def _train(config, model_dir, *, steps=4, stop_after=None, initial_params=None):
  from tests.trainer_test import copy_task
  from tinythinker_jax.training import optimizers, trainer
  schedule = optimizers.make_schedule("constant", learning_rate=3e-3, warmup_steps=2)
  return trainer.train(
      model=EncoderDecoderModel(config),
      objective=objectives.TokenCrossEntropy(EncoderDecoderModel(config)),
      optimizer=optimizers.make_optimizer("adafactor", schedule, param_axes=(
          optimizers.param_logical_axes(EncoderDecoderModel(config).abstract_params()))),
      partitioner=partitioning.Partitioner(partitioning.create_mesh(1, 1)),
      batch_fn=copy_task(config.vocab_size, 8), global_batch_size=8, train_steps=steps,
      model_dir=str(model_dir), checkpoint=trainer.CheckpointSettings(
          save_every=2, keep=2, asynchronous=False), log_every=1, progress=False,
      stop_after=stop_after, initial_params=initial_params)


def test_scanned_checkpoints_resume_and_load_in_either_layout(configs, tmp_path):
  plain, scanned = configs
  start = _random_params(plain, 8)
  # The trainer converts the unscanned initial parameters for the scanned run.
  first = _train(scanned, tmp_path / "scanned", steps=2, stop_after=1,
                 initial_params=lambda shardings: start)
  resumed = _train(scanned, tmp_path / "scanned", steps=2)  # restores step 1
  assert resumed.resumed_from == 1
  assert not np.allclose(jax.device_get(resumed.state.params)["decoder"]["layers"]["mlp"]
                         ["wo"]["kernel"], jax.device_get(first.state.params)["decoder"]
                         ["layers"]["mlp"]["wo"]["kernel"])
  final = jax.device_get(resumed.state.params)
  loaded = weights.load(str(tmp_path / "scanned"), require_vocabulary=False)
  assert loaded.config.scan_layers
  _assert_trees_equal(loaded.params, final)
  unscanned = weights.load(str(tmp_path / "scanned"), model=plain,
                           require_vocabulary=False)
  _assert_trees_equal(unscanned.params, t5.unscan_params(final, scanned))
  with pytest.raises(errors.UserError, match="scanned/checkpoints/2: written with T5Config"
                                             ".scan_layers=True, but this run has"):
    _train(plain, tmp_path / "scanned", steps=3)


@pytest.mark.slow
def test_scanned_training_matches_unscanned(configs, tmp_path):
  """Adafactor (per layer) from the same start: the same parameters after 3 steps."""
  from tests.trainer_test import assert_trees_close
  plain, scanned = configs
  start = _random_params(plain, 9)
  reference = _train(plain, tmp_path / "plain", steps=3, initial_params=lambda shardings: start)
  got = _train(scanned, tmp_path / "scanned", steps=3, initial_params=lambda shardings: start)
  assert_trees_close(t5.unscan_params(jax.device_get(got.state.params), scanned),
                     jax.device_get(reference.state.params))


def test_gin_macros_set_scan_layers_and_remat():
  import gin
  from tinythinker_jax import gin_utils
  for name in ("t5_1_0/small", "t5_1_1/tiny", "flan_t5/base"):
    gin.clear_config()
    try:
      gin_utils.parse([f"models/{name}.gin"], ["DROPOUT_RATE = 0.0"])
      assert not gin_utils.resolve(gin_utils.query("MODEL_CONFIG")).scan_layers
      gin.clear_config()
      gin_utils.parse([f"models/{name}.gin"], ["DROPOUT_RATE = 0.0", "SCAN_LAYERS = True",
                                                "REMAT_POLICY = 'minimal'"])
      config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
      assert (config.scan_layers, config.remat_policy) == (True, "minimal")
    finally:
      gin.clear_config()
