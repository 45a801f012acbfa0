"""t5x checkpoints -> our parameters, for T5 / Flan-T5 weights held in t5x's format.

t5x checkpoints do not store the model's configuration, so the caller gives
it (the user's model gin); every parameter is checked against its shape and
a missing, misshapen or unused one is named. Only the parameters (`target`)
are read: the optimizer state beside them (Adafactor's factored moments,
often larger than the model) is never opened.

The two layouts t5x writes (read from google-research/t5x `t5x/checkpoints.py`):

1. Its own Checkpointer (`checkpoint_<step>/checkpoint`): a msgpack file
   written by `flax.serialization.to_bytes({'version': 3, 'optimizer':
   state})`, where `state` is the optimizer's state dict `{'target': params,
   'state': {'step', 'param_states'}}` (files without `version` hold that
   dict at the top). Each leaf is either the array itself (unpartitioned
   ones, as flax's msgpack ndarray extension) or the JSON of a TensorStore
   spec, `{'driver': 'zarr', 'dtype': ..., 'kvstore': {'driver': 'file' |
   'gfile' | 'gcs', 'path': 'target.encoder.layers_0.attention.query.kernel/'},
   'metadata': {...}}`, naming a zarr array beside the file (tensorstore
   < 0.1.14 put `path` beside `kvstore`). Since version 3 bfloat16 arrays are
   stored as zarr's `bfloat16`; version 2 wrote them as uint16, which t5x
   itself refuses and so do we. Msgpack files written through early orbax
   hold `PLACEHOLDER://<name>` strings instead, naming the zarr folder.
2. Orbax (t5x's `OrbaxCheckpointManagerInterface`): `checkpoint_<step>/state/`
   is an orbax PyTree checkpoint (OCDBT) of the train state dict
   `{'target': params, 'state': {...}}`, beside `checkpoint_<step>/dataset/`.

A path may name the model dir (its latest `checkpoint_<step>`), a step dir,
its `state/` folder, or the msgpack `checkpoint` file.

t5x's `DenseGeneral` stores every kernel as a 2-D matrix: query/key/value
`[embed, heads * kv]` and out `[heads * kv, embed]`; ours are 3-D, and the
row-major reshape between them is the one t5x applies when it runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Optional

import ml_dtypes
import numpy as np
from etils import epath

from tinythinker_jax import errors
from tinythinker_jax.convert.hf import CheckpointMismatchError, expected_param_shapes
from tinythinker_jax.models.t5 import T5Config

MSGPACK_FILE = "checkpoint"
ORBAX_STATE_DIR = "state"
STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
PLACEHOLDER = "PLACEHOLDER://"
LEGACY, ORBAX = "t5x-msgpack", "t5x-orbax"
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt")
_TF_CHECKPOINT_HEADER = b"model_checkpoint_path"
Key = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class T5xLocation:
  layout: str  # LEGACY or ORBAX
  directory: str  # the folder holding the msgpack file, or the orbax state folder


def _is_orbax_state(path: epath.Path) -> bool:
  return path.is_dir() and any((path / m).exists() for m in _ORBAX_MARKERS)


def _is_msgpack_checkpoint(file: epath.Path) -> bool:
  if not file.is_file():
    return False
  with file.open("rb") as f:
    head = f.read(len(_TF_CHECKPOINT_HEADER))
  if head == _TF_CHECKPOINT_HEADER:
    raise errors.UserError(
        f"{file}: a TensorFlow (Mesh TensorFlow T5) checkpoint, not a t5x one; convert it "
        "with t5x's `t5x/scripts/convert_tf_checkpoint.py` first")
  return True


def locate(path: str) -> Optional[T5xLocation]:
  """The t5x checkpoint `path` names, or None when it is not one."""
  p = epath.Path(path)
  if p.name == MSGPACK_FILE and _is_msgpack_checkpoint(p):
    return T5xLocation(LEGACY, os.fspath(p.parent))
  if not p.is_dir():
    return None
  if _is_orbax_state(p):
    return T5xLocation(ORBAX, os.fspath(p))
  if _is_orbax_state(p / ORBAX_STATE_DIR):
    return T5xLocation(ORBAX, os.fspath(p / ORBAX_STATE_DIR))
  if _is_msgpack_checkpoint(p / MSGPACK_FILE):
    return T5xLocation(LEGACY, os.fspath(p))
  steps = sorted((int(m.group(1)), child) for child in p.iterdir()
                 if (m := STEP_DIR.match(child.name)) and child.is_dir())
  for _, child in reversed(steps):  # the latest complete step
    found = locate(os.fspath(child))
    if found is not None:
      return found
  return None


# ------------------------------------------------------------------ readers


@dataclasses.dataclass
class _Leaf:
  shape: tuple[int, ...]
  read: Callable[[], np.ndarray]


def _flatten(tree: Any, prefix: Key = ()) -> dict[Key, Any]:
  """Leaves of a nested dict; a TensorStore spec dict counts as one leaf."""
  if isinstance(tree, Mapping) and not _is_ts_spec(tree):
    out: dict[Key, Any] = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def _is_ts_spec(node: Mapping) -> bool:
  return "driver" in node and ("kvstore" in node or "path" in node)


def _kvstore(directory: str, relative: str) -> dict:
  """A TensorStore kvstore for `relative` under the checkpoint folder."""
  m = re.fullmatch(r"gs://([^/]*)/?(.*)", directory, re.DOTALL)
  if m:
    return {"driver": "gcs", "bucket": m.group(1), "path": os.path.join(m.group(2), relative)}
  return {"driver": "file", "path": os.path.join(directory, relative)}


def _zarr_leaf(directory: str, relative: str, dtype: Optional[str], name: str) -> _Leaf:
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  if dtype == "uint16":
    raise CheckpointMismatchError(
        f"{directory}: {name} is stored as uint16 (t5x checkpoint version 2's bfloat16); "
        "t5x reads only version 3, which stores bfloat16 natively: re-save it with t5x")
  spec: dict[str, Any] = {"driver": "zarr", "kvstore": _kvstore(directory, relative)}
  try:
    store = ts.open(spec, open=True, read=True).result()
  except ValueError as e:
    raise errors.MissingFileError(
        f"{directory}: {name}: cannot open its zarr array {relative!r} ({e})") from e
  return _Leaf(tuple(int(n) for n in store.shape), lambda: np.asarray(store.read().result()))


def _msgpack_leaf(directory: str, name: str, value: Any) -> _Leaf:
  if isinstance(value, (np.ndarray, np.generic, int, float)):
    array = np.asarray(value)
    return _Leaf(tuple(array.shape), lambda: array)
  if isinstance(value, str) and value.startswith(PLACEHOLDER):
    return _zarr_leaf(directory, value[len(PLACEHOLDER):], None, name)
  if isinstance(value, Mapping) and _is_ts_spec(value):
    if value.get("driver") != "zarr":
      raise errors.UserError(f"{directory}: {name}: TensorStore driver "
                             f"{value.get('driver')!r}; t5x writes 'zarr'")
    kvstore = value.get("kvstore", {})
    relative = kvstore.get("path", value.get("path")) if isinstance(kvstore, Mapping) \
        else value.get("path")
    if not relative:
      raise errors.UserError(f"{directory}: {name}: TensorStore spec without a path")
    return _zarr_leaf(directory, relative, value.get("dtype"), name)
  raise errors.UserError(f"{directory}/{MSGPACK_FILE}: {name}: unexpected value of type "
                         f"{type(value).__name__}")


def _target_of(contents: Mapping, source: str) -> Mapping:
  """`target` (the parameters) out of a checkpoint's state dict."""
  for root in (contents.get("optimizer"), contents.get("_optimizer"), contents):
    if isinstance(root, Mapping) and isinstance(root.get("target"), Mapping):
      return root["target"]
  raise errors.UserError(f"{source}: no 'target' (the parameters) in the checkpoint; its "
                         f"top-level keys are {sorted(contents)}")


def _legacy_leaves(directory: str) -> dict[Key, _Leaf]:
  from flax import serialization  # pylint: disable=import-outside-toplevel
  file = epath.Path(directory) / MSGPACK_FILE
  try:
    contents = serialization.msgpack_restore(file.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types.
    raise errors.UserError(f"{file}: not a msgpack t5x checkpoint ({e})") from e
  if not isinstance(contents, Mapping):
    raise errors.UserError(f"{file}: not a t5x checkpoint (a {type(contents).__name__})")
  version = contents.get("version", 0)
  if "optimizer" in contents and version < 2:
    raise errors.UserError(f"{file}: checkpoint version {version}; t5x reads versions "
                           "2 and 3")
  target = _target_of(contents, os.fspath(file))
  return {key: _msgpack_leaf(directory, "target/" + "/".join(key), value)
          for key, value in _flatten(target).items() if value is not None}


def _orbax_leaves(directory: str) -> dict[Key, _Leaf]:
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(directory)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  target_meta = _target_of(tree, directory)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {"target": jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), target_meta)}
  cache: dict[str, Any] = {}

  def read_all() -> dict[Key, np.ndarray]:
    # One restore of the parameters only (partial_restore skips the rest).
    if "target" not in cache:
      restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
          item=abstract, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
      cache["target"] = _flatten(jax.device_get(restored["target"]))
    return cache["target"]

  return {key: _Leaf(tuple(m.shape), lambda key=key: np.asarray(read_all()[key]))
          for key, m in _flatten(target_meta).items()}


# ------------------------------------------------------------------ mapping


def _t5x_shape(key: Key, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The shape t5x stores for our parameter `key` of shape `ours`."""
  if len(ours) == 3 and key[-1] == "kernel":
    if key[-2] == "out":  # [heads, kv, embed] -> [heads * kv, embed]
      return (ours[0] * ours[1], ours[2])
    return (ours[0], ours[1] * ours[2])  # [embed, heads, kv] -> [embed, heads * kv]
  return ours


def _numpy_dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def params_from_t5x_leaves(config: T5Config, leaves: Mapping[Key, _Leaf], *,
                           source: str) -> dict:
  """Checks every shape first, then reads and reshapes into our tree."""
  expected = expected_param_shapes(config)
  for key, shape in expected.items():
    name = "target/" + "/".join(key)
    if key not in leaves:
      raise CheckpointMismatchError(
          f"{source}: {name} (shape {_t5x_shape(key, shape)}) is missing from the t5x "
          "checkpoint; does the model gin match it (T5Config.num_encoder_layers, "
          "num_decoder_layers, logits_via_embedding, mlp_activations)?")
    stored = leaves[key].shape
    if stored not in (_t5x_shape(key, shape), shape):
      raise CheckpointMismatchError(
          f"{source}: {name} has shape {stored} in the t5x checkpoint, but the model "
          f"config gives it {_t5x_shape(key, shape)}")
  unused = sorted("target/" + "/".join(k) for k in leaves if k not in expected)
  if unused:
    raise CheckpointMismatchError(
        f"{source}: t5x parameters the model config does not use: {unused[:8]}"
        f"{' ...' if len(unused) > 8 else ''}")
  np_dtype = _numpy_dtype(config.param_dtype)
  params: dict = {}
  for key, shape in expected.items():
    node = params
    for part in key[:-1]:
      node = node.setdefault(part, {})
    node[key[-1]] = np.asarray(leaves[key].read()).reshape(shape).astype(np_dtype)
  return params


def load_t5x_checkpoint(path: str, config: T5Config) -> dict:
  """Reads a t5x checkpoint's parameters into our tree (numpy, `param_dtype`).

  `config` is the model's configuration (t5x checkpoints do not store it).
  Raises UserError when `path` is no t5x checkpoint, and
  CheckpointMismatchError naming the parameter that is missing, misshapen or
  not used by `config`.
  """
  location = locate(path)
  if location is None:
    raise errors.MissingFileError(
        f"{path}: not a t5x checkpoint (no `{MSGPACK_FILE}` msgpack file, no orbax "
        f"`{ORBAX_STATE_DIR}/` folder, no checkpoint_<step> folder)")
  reader = _legacy_leaves if location.layout == LEGACY else _orbax_leaves
  return params_from_t5x_leaves(config, reader(location.directory), source=path)
