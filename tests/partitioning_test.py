"""Sharding on 8 fake CPU devices: same numbers as one device, layouts as the rules say."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tinythinker_jax import partitioning
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.models import t5
from tinythinker_jax.training import objectives
from tinythinker_jax.training import optimizers
from tinythinker_jax.training import step as step_lib

GOLDEN = pathlib.Path(__file__).parent / "golden" / "t5_1_1_small_partition_specs.json"


def test_eight_fake_devices():
  assert jax.device_count() == 8


def test_rules_are_t5x_defaults():
  assert partitioning.standard_logical_axis_rules() == (
      ("batch", "data"), ("vocab", "model"), ("embed", None), ("mlp", "model"),
      ("heads", "model"), ("kv", None), ("joined_kv", "model"),
      ("relpos_buckets", None), ("abspos_buckets", None), ("length", None),
      ("layers", None), ("stack", None), ("mlp_activations", None), ("kv_heads", None))
  fsdp = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert ("embed", "data") in fsdp and ("embed", None) not in fsdp
  extra = partitioning.standard_logical_axis_rules(additional_rules=[("foo", "model")])
  assert extra[-1] == ("foo", "model")
  with pytest.raises(ValueError, match="parameter_partitioning_dims=3"):
    partitioning.standard_logical_axis_rules(parameter_partitioning_dims=3)


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  targets = rng.integers(1, config.vocab_size, (8, 12)).astype(np.int32)
  targets[3, 7:] = 0
  enc = rng.integers(1, config.vocab_size, (8, 16)).astype(np.int32)
  enc[5, 9:] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": targets,
          "decoder_input_tokens": np.asarray(step_lib.shift_right(targets))}


def _loss_and_grads(module):
  model = objectives.TokenCrossEntropy(EncoderDecoderModel(module.config), z_loss=0.0)
  return jax.value_and_grad(lambda p, b: step_lib.mean_loss(model, p, b)[0])


# Expected specs under the 1-D rules and under FSDP (embed over data).
EXPECTED = {
    1: {("token_embedder", "embedding"): P("model", None),
        ("encoder", "layers_0", "attention", "query", "kernel"): P(None, "model", None),
        ("encoder", "layers_0", "attention", "out", "kernel"): P("model", None, None),
        ("encoder", "layers_0", "mlp", "wi_0", "kernel"): P(None, "model"),
        ("decoder", "layers_1", "mlp", "wo", "kernel"): P("model", None),
        ("decoder", "relpos_bias", "rel_embedding"): P("model", None),
        ("decoder", "logits_dense", "kernel"): P(None, "model"),
        ("encoder", "encoder_norm", "scale"): P(None)},
    2: {("token_embedder", "embedding"): P("model", "data"),
        ("encoder", "layers_0", "attention", "query", "kernel"): P("data", "model", None),
        ("encoder", "layers_0", "attention", "out", "kernel"): P("model", None, "data"),
        ("encoder", "layers_0", "mlp", "wi_0", "kernel"): P("data", "model"),
        ("decoder", "layers_1", "mlp", "wo", "kernel"): P("model", "data"),
        ("decoder", "relpos_bias", "rel_embedding"): P("model", None),
        ("decoder", "logits_dense", "kernel"): P("data", "model"),
        ("encoder", "encoder_norm", "scale"): P("data")},
}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.fixture(scope="module")
def one_device_reference():
  """(config, params, loss, grads) on one device, computed once for the module."""
  from tests.conftest import init_params, make_tiny_config
  config = make_tiny_config()
  params = init_params(config, 0)
  loss, grads = jax.jit(_loss_and_grads(t5.T5(config)))(params, _batch(config))
  return config, params, loss, grads


@pytest.mark.parametrize("data,model,param_dims", [(8, 1, 1), (2, 4, 1), (1, 8, 1),
                                                   (2, 4, 2), (8, 1, 2)])
def test_sharded_step_matches_one_device(one_device_reference, data, model, param_dims):
  tiny_config, params, ref_loss, ref_grads = one_device_reference
  module = t5.T5(tiny_config)
  batch = _batch(tiny_config)

  mesh = partitioning.create_mesh(data, model)
  assert mesh.shape == {"data": data, "model": model}
  partitioner = partitioning.Partitioner(
      mesh, partitioning.standard_logical_axis_rules(parameter_partitioning_dims=param_dims))
  sharded, shardings = partitioner.init(lambda r: t5.init_params(tiny_config, r),
                                        jax.random.key(0))
  fn = partitioner.partition(_loss_and_grads(module),
                             out_shardings=(partitioner.replicated, shardings))
  loss, grads = fn(sharded, partitioner.shard_batch(batch))

  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-6),
               grads, ref_grads)
  # Same initial values as the unsharded init, and laid out as the rules say.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-6, atol=1e-7),
               sharded, params)
  mesh_sizes = dict(mesh.shape)
  for path, spec in EXPECTED[param_dims].items():
    for tree in (sharded, grads):
      array = _get(tree, path)
      assert array.sharding.spec == spec, path
      expected_shard = tuple(
          dim // (mesh_sizes[axis] if axis else 1) for dim, axis in
          zip(array.shape, tuple(spec) + (None,) * (array.ndim - len(spec))))
      assert array.addressable_shards[0].data.shape == expected_shard, path
  batch_array = partitioner.shard_batch(batch)["encoder_input_tokens"]
  assert batch_array.addressable_shards[0].data.shape == (8 // data, 16)


def test_activation_constraints_follow_rules(tiny_config):
  """Inside the partitioned step the model's activation constraints use the mesh."""
  mesh = partitioning.create_mesh(2, 4)
  partitioner = partitioning.Partitioner(mesh)
  params, _ = partitioner.init(lambda r: t5.init_params(tiny_config, r), jax.random.key(0))
  batch = partitioner.shard_batch(_batch(tiny_config))
  module = t5.T5(tiny_config)
  fn = partitioner.partition(lambda p, b: module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
  hlo = fn.lower(params, batch).as_text()
  assert "sharding" in hlo
  logits = fn(params, batch)
  # Logits carry ('batch', 'length', 'vocab') -> ('data', None, 'model').
  assert logits.sharding.spec == P("data", None, "model")


def partition_table() -> dict:
  """Parameter -> shape, logical axes and mesh axes for t5_1_1 small (1-D rules)."""
  config = t5.T5Config(emb_dim=512, num_heads=6, num_encoder_layers=8,
                       num_decoder_layers=8, head_dim=64, mlp_dim=1024,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  abstract = jax.eval_shape(lambda: t5.init_params(config, jax.random.key(0)))
  partitioner = partitioning.Partitioner(partitioning.create_mesh(1, 1))  # Rules only.
  is_spec = lambda x: isinstance(x, P)  # noqa: E731
  specs = jax.tree_util.tree_flatten_with_path(partitioner.param_specs(abstract),
                                               is_leaf=is_spec)[0]
  logical = jax.tree.leaves(nn.get_partition_spec(abstract), is_leaf=is_spec)
  shapes = jax.tree.leaves(nn.unbox(abstract))
  table = {}
  for (path, spec), names, shape in zip(specs, logical, shapes):
    ndim = len(shape.shape)
    table["/".join(k.key for k in path)] = {
        "shape": list(shape.shape), "logical": list(names),
        "mesh": list(spec) + [None] * (ndim - len(spec))}
  return table


def test_golden_partition_specs_t5_1_1_small():
  table = partition_table()
  golden = json.loads(GOLDEN.read_text())
  assert table == golden
  # embedding + 2 relpos + 8 encoder layers x 9 + 8 decoder layers x 14 + 2 norms + logits
  assert len(golden) == 1 + 2 + 8 * 9 + 8 * 14 + 2 + 1
  # Spot checks written by hand from t5x's rules.
  assert golden["token_embedder/embedding"]["mesh"] == ["model", None]
  assert golden["decoder/layers_7/encoder_decoder_attention/out/kernel"]["mesh"] == [
      "model", None, None]
  assert golden["encoder/layers_3/mlp/wi_1/kernel"]["mesh"] == [None, "model"]


def test_data_layout_single_process():
  partitioner = partitioning.Partitioner(partitioning.create_mesh(2, 4))
  layout = partitioner.data_layout(16)
  assert (layout.shard_id, layout.num_shards, layout.local_batch_size) == (0, 1, 16)
  with pytest.raises(ValueError, match="does not split evenly"):
    partitioner.data_layout(3)


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match="needs 16 devices"):
    partitioning.create_mesh(4, 4)
  with pytest.raises(ValueError, match="does not divide"):
    partitioning.create_mesh(-1, 3)
  with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
    partitioning.Partitioner(partitioning.create_mesh(), (("mlp", "tensor"),))


def test_fsdp_shards_embed_of_params_but_not_activations():
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(2, 4),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  assert partitioner.logical_to_mesh_axes(("batch", "length", "embed")) == \
      P("data", None, None)
  assert partitioner.logical_to_mesh_axes(("embed", "mlp")) == P("data", "model")


if __name__ == "__main__":
  # Regenerate the golden file after an intended change, then review the diff.
  rows = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
          for k, v in sorted(partition_table().items())]
  GOLDEN.write_text("{\n" + ",\n".join(rows) + "\n}\n")


def _state_shardings(partitioner, boxed, abstract):
  """The trainer's derivation: parameters' axes, then the optimizer state's."""
  return partitioner.logical_shardings(optimizers.train_state_logical_axes(abstract, boxed))


@pytest.mark.parametrize("data,model,param_dims", [(2, 4, 1), (8, 1, 1), (8, 1, 2)])
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_every_train_state_leaf_is_sharded_like_its_parameter(data, model, param_dims,
                                                               optimizer):
  config = t5.T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(data, model),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=param_dims))
  boxed = jax.eval_shape(lambda r: t5.init_params(config, r), jax.random.key(0))
  opt = optimizers.make_optimizer(
      optimizer, optimizers.make_schedule("constant", learning_rate=1e-3, warmup_steps=0),
      param_axes=optimizers.param_logical_axes(boxed), grad_clip_norm=1.0)
  create = lambda p: step_lib.TrainState.create(p, opt)  # noqa: E731
  abstract = jax.eval_shape(create, nn.unbox(boxed))
  shardings = _state_shardings(partitioner, boxed, abstract)
  params = jax.device_get(nn.unbox(t5.init_params(config, jax.random.key(1))))
  param_specs = {jax.tree_util.keystr(p): tuple(s.spec) + (None,) * (x.ndim - len(s.spec))
                 for (p, s), x in zip(jax.tree_util.tree_flatten_with_path(
                     shardings.params)[0], jax.tree.leaves(params))}
  assert param_specs == {jax.tree_util.keystr(p): tuple(s.spec) + (None,) * (
      x.ndim - len(s.spec)) for (p, s), x in zip(jax.tree_util.tree_flatten_with_path(
          partitioner.param_shardings(boxed))[0], jax.tree.leaves(params))}
  state = partitioner.partition(create, out_shardings=shardings)(params)
  expected = jax.device_get(create(params))  # one device, XLA's own choice
  counts = {"same": 0, "factored": 0, "replicated": 0}
  for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(leaf), want)  # placement changes no value
    name = jax.tree_util.keystr(path)
    owner = [k for k in param_specs if name.endswith(k)]
    spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
    if not owner or leaf.ndim == 0 or leaf.shape == (1,):
      assert all(a is None for a in spec), name  # counts, steps, unused slots
      counts["replicated"] += 1
      continue
    pspec = param_specs[max(owner, key=len)]
    if len(spec) == len(pspec):
      assert spec == pspec, name  # Adam's moments, Adafactor's unfactored v
      counts["same"] += 1
    else:  # A factored statistic: its parameter's layout less the reduced axes.
      assert len(spec) < len(pspec) and all(a in pspec for a in spec if a), name
      counts["factored"] += 1
  assert counts["same"] > 0
  if optimizer == "adafactor":  # the 3-D attention kernels, at least
    assert counts["factored"] > 0
  if (data, model) == (2, 4) or param_dims == 2:
    # Some statistic is really split over devices, not replicated.
    assert any(s.spec != P() and any(a is not None for a in s.spec)
               for s in jax.tree.leaves(shardings.opt_state))


def test_an_xxl_model_is_never_whole_on_one_device():
  # Shapes alone (nothing allocated): the layout sharded loading and training
  # give T5 1.1 XXL (11B parameters) on the 8 devices, FSDP over 2x4.
  config = t5.T5Config(vocab_size=32128, emb_dim=4096, num_heads=64, head_dim=64,
                       mlp_dim=10240, num_encoder_layers=24, num_decoder_layers=24,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False)
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(2, 4),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  boxed = jax.eval_shape(lambda r: t5.init_params(config, r), jax.random.key(0))
  params = nn.unbox(boxed)
  shardings = partitioner.param_shardings(boxed)
  total = sum(x.size * 4 for x in jax.tree.leaves(params))
  per_device = partitioning.bytes_per_device(params, shardings)
  assert len(per_device) == 8
  # Every weight matrix is split 8 ways (embed over data, the other axis over
  # model); only small leaves (layer-norm scales, relative position biases)
  # are whole or 4-way.
  assert max(per_device.values()) < total / 8 * 1.001
  for x, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))):
    if x.size * 4 > 2**20:
      assert np.prod(sharding.shard_shape(x.shape)) * 8 == x.size, x.shape


def test_per_layer_statistics_of_a_scanned_stack_follow_their_parameters():
  config = t5.T5Config(vocab_size=64, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                       num_encoder_layers=3, num_decoder_layers=2,
                       mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                       scan_layers=True)
  boxed = jax.eval_shape(lambda r: t5.init_params(config, r), jax.random.key(0))
  opt = optimizers.make_optimizer("adafactor", optimizers.make_schedule(
      "constant", learning_rate=1e-3, warmup_steps=0),
      param_axes=optimizers.param_logical_axes(boxed))
  partitioner = partitioning.Partitioner(
      partitioning.create_mesh(2, 4),
      partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2))
  create = lambda p: step_lib.TrainState.create(p, opt)  # noqa: E731
  abstract = jax.eval_shape(create, nn.unbox(boxed))
  shardings = _state_shardings(partitioner, boxed, abstract)
  flat = {jax.tree_util.keystr(p): (x.shape, s.spec) for (p, x), s in zip(
      jax.tree_util.tree_flatten_with_path(abstract)[0], jax.tree.leaves(shardings))}
  kernel = flat[".params['encoder']['layers']['mlp']['wi_0']['kernel']"]
  assert kernel == ((3, 128, 256), P(None, "data", "model"))
  # Per layer, v_row drops the largest dimension (mlp), v_col the other (embed).
  path = "['encoder']['layers']['mlp']['wi_0']['kernel']"
  assert flat[f".opt_state.v_row{path}"] == ((3, 128), P(None, "data"))
  assert flat[f".opt_state.v_col{path}"] == ((3, 256), P(None, "model"))
  # A scanned attention kernel (layers, embed, heads, kv): embed rows, heads x kv
  # columns, each layer's own.
  query = "['encoder']['layers']['attention']['query']['kernel']"
  assert flat[f".params{query}"][0] == (3, 128, 4, 32)
  assert flat[f".opt_state.v_row{query}"] == ((3, 128), P(None, "data"))
  assert flat[f".opt_state.v_col{query}"] == ((3, 4, 32), P(None, "model", None))
  params = jax.device_get(nn.unbox(t5.init_params(config, jax.random.key(1))))
  state = partitioner.partition(create, out_shardings=shardings)(params)
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(jax.device_get(
      create(params)))):
    np.testing.assert_array_equal(np.asarray(leaf), want)
