"""t5x's Adafactor (`training.adafactor`): against optax's on matrices, against a
hand-written numpy step on a 3-D attention kernel factored by its logical axes,
per layer on a scanned stack, and the train state's derived shardings."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tinythinker_jax.training import adafactor, optimizers


def _train(tx, params, grad_steps):
  @jax.jit
  def run(params):
    state = tx.init(params)
    for g in grad_steps:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
    return params, state
  return run(params)


def _random(rng, shape, scale=1.0):
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


def test_matrices_train_as_optax_adafactor_does():
  rng = np.random.default_rng(0)
  params = {"big": _random(rng, (256, 130)), "small": _random(rng, (16, 8)),
            "vector": _random(rng, (130,), 0.01)}
  axes = {"big": ("embed", "mlp"), "small": ("embed", "mlp"), "vector": ("embed",)}
  steps = [jax.tree.map(lambda x: _random(rng, x.shape), params) for _ in range(4)]
  ours, state = _train(adafactor.adafactor(1e-2, axes), params, steps)
  reference, _ = _train(optax.adafactor(1e-2, decay_rate=0.8, momentum=None,
                                        multiply_by_parameter_scale=True,
                                        clipping_threshold=1.0, eps=1e-30), params, steps)
  for k in params:
    np.testing.assert_allclose(ours[k], reference[k], rtol=1e-5, atol=1e-7, err_msg=k)
  # `big` is factored (second largest dimension >= 128), the others are not.
  # (t5x: v_row drops the largest dimension, v_col the second largest.)
  assert state.v_row["big"].shape == (130,) and state.v_col["big"].shape == (256,)
  assert state.v["small"].shape == (16, 8) and state.v_row["small"].shape == (1,)


def test_an_attention_kernel_is_factored_by_its_logical_axes():
  """(embed, heads, kv) = (6, 4, 2): rows over embed, columns over heads x kv,
  whatever the sizes; checked against the update written out in numpy."""
  rng = np.random.default_rng(1)
  p = rng.normal(size=(6, 4, 2))
  g = rng.normal(size=(6, 4, 2))
  new, state = _train(adafactor.adafactor(0.1, {"q": ("embed", "heads", "kv")}),
                      {"q": jnp.asarray(p, jnp.float32)}, [{"q": jnp.asarray(g, jnp.float32)}])
  assert state.v_row["q"].shape == (6,) and state.v_col["q"].shape == (4, 2)
  assert state.v["q"].shape == (1,)
  decay = 1.0 - 1.0 ** -0.8  # step 1: no memory of zero
  sq = g * g + 1e-30
  v_row = (1 - decay) * sq.mean(axis=(1, 2))
  v_col = (1 - decay) * sq.mean(axis=0)
  y = g * (v_row / v_row.mean())[:, None, None] ** -0.5 * v_col[None] ** -0.5
  y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
  expected = p - 0.1 * max(np.sqrt(np.mean(p * p)), 1e-3) * y
  np.testing.assert_allclose(new["q"], expected, rtol=1e-5)
  np.testing.assert_allclose(state.v_row["q"], v_row, rtol=1e-5)
  with pytest.raises(ValueError, match="mixes factored and unfactored"):
    adafactor.plan(("embed", "mlp", None), (4, 4, 4), name="w")
  with pytest.raises(ValueError, match="logical axis 'nonsense'"):
    adafactor.plan(("nonsense",), (4,), name="w")


def test_a_scanned_stack_trains_as_each_layer_alone():
  """The `layers` axis is a batch dimension: statistics, update clipping and the
  parameter scale are each layer's own, as if the layers were separate."""
  rng = np.random.default_rng(2)
  layers = [{"k": _random(rng, (256, 128), s), "q": _random(rng, (8, 4, 2), s)}
            for s in (0.1, 3.0)]  # different scales: shared statistics would show
  grads = [[jax.tree.map(lambda x: _random(rng, x.shape), p) for p in layers]
           for _ in range(3)]
  axes = {"k": ("embed", "mlp"), "q": ("embed", "heads", "kv")}
  stacked_axes = {k: ("layers",) + v for k, v in axes.items()}
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
  got, _ = _train(adafactor.adafactor(1e-2, stacked_axes), stack(layers),
                  [stack(g) for g in grads])
  for i, layer in enumerate(layers):
    alone, _ = _train(adafactor.adafactor(1e-2, axes), layer, [g[i] for g in grads])
    for k in layer:
      np.testing.assert_allclose(got[k][i], alone[k], rtol=1e-6, atol=1e-7)


def test_the_state_shardings_are_derived_from_the_parameters_axes():
  params = {"k": jax.ShapeDtypeStruct((3, 128, 256), jnp.float32),
            "q": jax.ShapeDtypeStruct((16, 4, 8), jnp.float32),
            "scale": jax.ShapeDtypeStruct((16,), jnp.float32)}
  axes = {"k": ("layers", "embed", "mlp"), "q": ("embed", "heads", "kv"),
          "scale": ("embed",)}
  P = jax.sharding.PartitionSpec
  for name, tx in (("adafactor", adafactor.adafactor(1e-2, axes)),
                   ("adamw", optax.chain(optax.clip_by_global_norm(1.0),
                                         optax.adamw(1e-3)))):
    state = jax.eval_shape(tx.init, params)
    specs = optimizers.state_logical_axes(state, axes, params)
    flat = dict(zip([jax.tree_util.keystr(p) for p, _ in
                     jax.tree_util.tree_flatten_with_path(state)[0]],
                    jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))))
    if name == "adafactor":
      assert flat[".v_row['k']"] == P("layers", "embed")  # per layer, mlp reduced
      assert flat[".v_col['k']"] == P("layers", "mlp")
      assert flat[".v_row['q']"] == P("embed") and flat[".v_col['q']"] == P("heads", "kv")
      assert flat[".v['scale']"] == P("embed") and flat[".v['q']"] == P()
      assert flat[".count"] == P()
    else:
      assert flat["[1][0].mu['k']"] == P("layers", "embed", "mlp")
      assert flat["[1][0].nu['q']"] == P("embed", "heads", "kv")
      assert flat["[1][0].count"] == P()
  # A state this trainer cannot place is refused, not guessed.
  state = jax.eval_shape(optax.adafactor(1e-2).init, params)
  with pytest.raises(ValueError, match="sharding cannot be derived"):
    optimizers.state_logical_axes(state, axes, params)




@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_every_decoder_only_parameter_has_a_plan(architecture):
  """Every logical axis of the Llama and GPT-2 students (grouped-query
  attention's `kv_heads` too) has a factor rule: Adafactor, t5x's default,
  trains them (it stopped on `kv_heads` before)."""
  import flax.linen as nn

  from tinythinker_jax.families.decoder_only import DecoderOnlyModel
  from tinythinker_jax.models import gpt2, llama
  config = (llama.LlamaConfig(vocab_size=32, emb_dim=32, num_heads=4, num_kv_heads=2,
                              head_dim=8, mlp_dim=64, num_layers=2)
            if architecture == "llama" else
            gpt2.GPT2Config(vocab_size=32, emb_dim=32, num_heads=4, num_layers=2))
  boxed = DecoderOnlyModel(config).init_params(jax.random.key(0))
  axes = nn.get_partition_spec(boxed)
  axes = jax.tree.map(tuple, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  params = nn.unbox(boxed)
  grads = jax.tree.map(jnp.ones_like, params)
  new, _ = _train(adafactor.adafactor(0.1, axes), params, [grads])
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, params)
  assert all(jax.tree.leaves(moved))
