"""t5x checkpoint import: both layouts t5x writes, written here as t5x writes them.

The legacy layout is built with msgpack (flax's encoding, which t5x's
`serialization.to_bytes` uses) and TensorStore zarr arrays exactly as
`t5x/checkpoints.py` (VERSION 3) lays them out; the orbax layout through
orbax's CheckpointManager configured as t5x's `OrbaxCheckpointManagerInterface`
configures it. Neither goes through the loader's code. Each checkpoint carries
an Adafactor-style optimizer state that the loader must not read.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization

from tinythinker_jax import errors, weights
from tinythinker_jax.stages import phase1 as train_lib
from tinythinker_jax.convert import CheckpointMismatchError, load_t5x_checkpoint
from tinythinker_jax.models import t5

CONFIGS = {
    "v1.1": t5.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
                        num_encoder_layers=2, num_decoder_layers=2,
                        mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                        dropout_rate=0.0, relative_attention_num_buckets=8,
                        relative_attention_max_distance=20),
}
CONFIGS["v1.0"] = CONFIGS["v1.1"].replace(mlp_activations=("relu",), logits_via_embedding=True,
                                          num_decoder_layers=3)
BF16 = np.dtype(ml_dtypes.bfloat16)


def flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def nest(flat_tree):
  out = {}
  for key, v in flat_tree.items():
    node = out
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = v
  return out


def our_params(config, seed):
  """Random parameters in our tree (shapes from the model, values from numpy)."""
  shapes = jax.eval_shape(lambda: t5.init_params(config, jax.random.key(0)))
  shapes = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, shapes,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  rng = np.random.default_rng(seed)
  return nest({k: (rng.uniform(0.5, 1.5, v.shape) if k[-1] == "scale"
                   else rng.normal(0, 0.5, v.shape)).astype(np.float32)
               for k, v in flat(shapes).items()})


def t5x_layout(params):
  """t5x's DenseGeneral keeps kernels 2-D: [embed, heads*kv] and [heads*kv, embed]."""
  out = {}
  for key, v in flat(params).items():
    if v.ndim == 3:
      v = v.reshape(v.shape[0] * v.shape[1], -1) if key[-2] == "out" else \
          v.reshape(v.shape[0], -1)
    out[key] = v
  return out


def adafactor_state(target):
  """t5x's Adafactor param_states: factored v_row/v_col for matrices, v otherwise."""
  states = {}
  for key, v in target.items():
    if v.ndim == 2:
      states[key] = {"v_row": np.full(v.shape[:1], 0.5, np.float32),
                     "v_col": np.full(v.shape[1:], 0.25, np.float32),
                     "v": np.zeros((1,), np.float32), "m": np.zeros((1,), np.float32)}
    else:
      states[key] = {"v_row": np.zeros((1,), np.float32), "v_col": np.zeros((1,), np.float32),
                     "v": np.full(v.shape, 0.5, np.float32), "m": np.zeros((1,), np.float32)}
  return states


def write_legacy_t5x(step_dir, target, *, inline=(), missing_state=True, step=100):
  """`t5x.checkpoints.Checkpointer.save`'s files, VERSION 3 (no gin, no dataset)."""
  os.makedirs(step_dir)

  def to_tensorstore(name, array):
    shape = list(array.shape)
    chunks = [s // 2 if s % 2 == 0 and i == 0 else s for i, s in enumerate(shape)]
    spec = ts.Spec({"driver": "zarr", "dtype": np.dtype(array.dtype).name,
                    "kvstore": {"driver": "file", "path": name.replace("/", ".")},
                    "metadata": {"compressor": {"id": "gzip"}, "shape": shape,
                                 "chunks": chunks}}).to_json()
    absolute = dict(spec, kvstore=dict(spec["kvstore"], path=os.path.join(
        step_dir, spec["kvstore"]["path"])))
    ts.open(absolute, create=True, open=True).result().write(array).result()
    return spec  # relative, as t5x stores it

  written = {}
  for key, v in target.items():
    name = "/".join(("target",) + key)
    written[key] = v if name in inline else to_tensorstore(name, v)
  states = {}
  for key, state in adafactor_state(target).items():
    for slot, v in state.items():
      name = "/".join(("state", "param_states") + key + (slot,))
      states[key + (slot,)] = to_tensorstore(name, v) if v.size > 1 else v
  if missing_state:
    # An optimizer-state array whose files are gone: reading it would fail.
    first = next(k for k, s in states.items() if isinstance(s, dict))
    shutil.rmtree(os.path.join(step_dir, states[first]["kvstore"]["path"]))
  contents = {"version": 3, "optimizer": {
      "target": nest(written),
      "state": {"step": np.int32(step), "param_states": nest(states)}}}
  # t5x: serialization.to_bytes(...) with ts.Spec registered to serialize as
  # its JSON; msgpack_serialize of that state dict writes the same bytes.
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))


def write_orbax_t5x(model_dir, target, *, step=100, save_dtype=None):
  """`OrbaxCheckpointManagerInterface.save`: a `state` item, OCDBT, `checkpoint_<step>`."""
  state_dict = {"target": nest(target),
                "state": {"step": np.int32(step),
                          "param_states": nest({k + (s,): v for k, st in
                                                adafactor_state(target).items()
                                                for s, v in st.items()})}}
  save_args = jax.tree_util.tree_map_with_path(
      lambda path, _: ocp.SaveArgs(dtype=save_dtype if path[0].key == "target" else None),
      state_dict)
  manager = ocp.CheckpointManager(
      model_dir, options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state_dict, save_args=save_args)), force=True)
  manager.wait_until_finished()
  manager.close()


def assert_same_tree(loaded, expected):
  assert set(flat(loaded)) == set(flat(expected))
  for key, v in flat(expected).items():
    got = flat(loaded)[key]
    assert got.shape == v.shape and got.dtype == v.dtype, key
    np.testing.assert_array_equal(got, v, err_msg="/".join(key))


def logits(config, params):
  enc = jnp.asarray(np.random.default_rng(0).integers(2, config.vocab_size, (2, 7)))
  dec = jnp.asarray(np.random.default_rng(1).integers(2, config.vocab_size, (2, 5)))
  return np.asarray(jax.jit(t5.T5(config).apply)({"params": params}, enc, dec))


@pytest.mark.parametrize("name,dtype", [("v1.1", "float32"), ("v1.0", "bfloat16")])
def test_legacy_msgpack_tensorstore_checkpoint(name, dtype, tmp_path):
  config = CONFIGS[name]
  params = our_params(config, seed=1)
  target = {k: v.astype(dtype) for k, v in t5x_layout(params).items()}
  # Unpartitioned leaves are written into the msgpack itself.
  inline = {"target/encoder/encoder_norm/scale", "target/decoder/relpos_bias/rel_embedding"}
  write_legacy_t5x(str(tmp_path / "model" / "checkpoint_100"), target, inline=inline)
  older = {k: v + np.asarray(1, v.dtype) for k, v in target.items()}
  write_legacy_t5x(str(tmp_path / "model" / "checkpoint_50"), older, missing_state=False)
  assert os.path.exists(tmp_path / "model" / "checkpoint_100" /
                        "target.encoder.layers_0.attention.query.kernel" / ".zarray")

  expected = jax.tree.map(lambda v: v.astype(dtype).astype(np.float32), params)
  for path in ("model", "model/checkpoint_100", "model/checkpoint_100/checkpoint"):
    loaded = load_t5x_checkpoint(str(tmp_path / path), config)
    assert_same_tree(loaded, expected)
  np.testing.assert_array_equal(logits(config, loaded), logits(config, expected))
  in_bf16 = load_t5x_checkpoint(str(tmp_path / "model"), config.replace(param_dtype="bfloat16"))
  assert flat(in_bf16)[("token_embedder", "embedding")].dtype == BF16
  older_loaded = load_t5x_checkpoint(str(tmp_path / "model" / "checkpoint_50"), config)
  np.testing.assert_array_equal(
      older_loaded["token_embedder"]["embedding"],
      older[("token_embedder", "embedding")].astype(np.float32))


def test_orbax_checkpoint_bfloat16(tmp_path):
  config = CONFIGS["v1.1"]
  params = our_params(config, seed=2)
  write_orbax_t5x(str(tmp_path / "model"), t5x_layout(params), save_dtype=BF16)
  assert (tmp_path / "model" / "checkpoint_100" / "state" / "_METADATA").exists()
  expected = jax.tree.map(lambda v: v.astype(BF16).astype(np.float32), params)
  for path in ("model", "model/checkpoint_100", "model/checkpoint_100/state"):
    assert_same_tree(load_t5x_checkpoint(str(tmp_path / path), config), expected)


def test_initial_checkpoint_path_accepts_t5x(tmp_path):
  config = CONFIGS["v1.1"]
  params = our_params(config, seed=3)
  write_orbax_t5x(str(tmp_path / "orbax"), t5x_layout(params))
  write_legacy_t5x(str(tmp_path / "legacy" / "checkpoint_7"), t5x_layout(params))
  for folder in ("orbax", "legacy"):
    loaded = weights.load(str(tmp_path / folder), model=config,
                          require_vocabulary=False, binding="INITIAL_CHECKPOINT_PATH")
    assert loaded.config == config
    assert_same_tree(loaded.params, params)
  initial = train_lib.initial_params(str(tmp_path / "legacy"), config,
                                      "INITIAL_CHECKPOINT_PATH")
  np.testing.assert_array_equal(logits(config, initial(None)), logits(config, params))
  with pytest.raises(errors.UserError, match="INITIAL_CHECKPOINT_PATH=.*does not store its "
                     "model config"):
    weights.load(str(tmp_path / "legacy"), binding="INITIAL_CHECKPOINT_PATH")


def test_mismatches_name_the_parameter(tmp_path):
  config = CONFIGS["v1.1"]
  write_legacy_t5x(str(tmp_path / "checkpoint_1"), t5x_layout(our_params(config, seed=4)))
  path = str(tmp_path / "checkpoint_1")
  with pytest.raises(CheckpointMismatchError,
                     match=r"target/\w+coder/layers_0/mlp/wi_0/kernel has shape \(16, 24\).*"
                     r"\(16, 32\)"):
    load_t5x_checkpoint(path, config.replace(mlp_dim=32))
  with pytest.raises(CheckpointMismatchError,
                     match=r"target/decoder/layers_2/.* is missing"):
    load_t5x_checkpoint(path, config.replace(num_decoder_layers=3))
  with pytest.raises(CheckpointMismatchError, match=r"does not use.*target/decoder/"
                     r"logits_dense/kernel"):
    load_t5x_checkpoint(path, config.replace(logits_via_embedding=True))
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.MissingFileError, match="not a t5x checkpoint"):
    load_t5x_checkpoint(str(tmp_path / "empty"), config)


def test_version_2_uint16_is_refused(tmp_path):
  config = CONFIGS["v1.1"]
  target = t5x_layout(our_params(config, seed=5))
  key = ("token_embedder", "embedding")
  target[key] = target[key].astype(BF16).view(np.uint16)
  write_legacy_t5x(str(tmp_path / "checkpoint_1"), target)
  with pytest.raises(CheckpointMismatchError, match="target/token_embedder/embedding.*uint16"):
    load_t5x_checkpoint(str(tmp_path / "checkpoint_1"), config)
