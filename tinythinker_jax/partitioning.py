"""Device meshes, t5x's logical-axis rules, and shardings.

Models name the logical axes of their parameters and activations; this is the
one place that maps those names onto a `jax.sharding.Mesh` with axes
`('data', 'model')`. The default rules are t5x's
`standard_logical_axis_rules`; `parameter_partitioning_dims=2` also shards
parameters' `embed` dimension over `data` (FSDP / ZeRO-3 style).

The same code runs on one CPU, on fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU or a TPU slice,
and across processes after `initialize_distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tinythinker_jax import errors, platforms

MeshAxes = Union[None, str, tuple[str, ...]]
LogicalAxisRules = tuple[tuple[str, MeshAxes], ...]

DATA_AXIS = "data"
MODEL_AXIS = "model"


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: Optional[Sequence[tuple[str, MeshAxes]]] = None,
) -> LogicalAxisRules:
  """t5x's default logical-axis rules.

  The rules are ordered; an axis takes the first rule whose mesh axis is not
  already used by another dimension of the same array, which is how
  `('embed', 'data')` shards parameters but not activations (their `batch`
  dimension already holds `data`).
  """
  base = [("batch", DATA_AXIS), ("vocab", MODEL_AXIS), ("mlp", MODEL_AXIS),
          ("heads", MODEL_AXIS), ("kv", None), ("joined_kv", MODEL_AXIS)]
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims == (1, 1):
    rules = base[:2] + [("embed", None)] + base[2:]
  elif dims == (2, 1):
    rules = base + [("embed", MODEL_AXIS)]
  elif dims == (1, 2):
    rules = base + [("embed", DATA_AXIS)]
  elif dims == (2, 2):
    rules = base + [("embed", MODEL_AXIS), ("embed", DATA_AXIS)]
  else:
    raise errors.UserError(f"activation_partitioning_dims={activation_partitioning_dims}, "
                     f"parameter_partitioning_dims={parameter_partitioning_dims}: "
                     "each must be 1 or 2")
  # `kv_heads`: grouped-query attention's key/value heads (decoder-only
  # students), fewer than the model axis may hold, so replicated over it.
  rules += [("relpos_buckets", None), ("abspos_buckets", None), ("length", None),
            ("layers", None), ("stack", None), ("mlp_activations", None),
            ("kv_heads", None)]
  if additional_rules:
    rules += [tuple(r) for r in additional_rules]
  return tuple(rules)


def create_mesh(data_parallelism: int = -1, model_parallelism: int = 1,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A `('data', 'model')` mesh; -1 for data parallelism takes all the rest.

  With explicit sizes whose product is smaller than the device count, the
  first devices are used (single-process only: every process must join a
  multi-process mesh).
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_parallelism < 1:
    raise errors.UserError(f"model_parallelism={model_parallelism} must be >= 1")
  if data_parallelism == -1:
    if len(devices) % model_parallelism:
      raise errors.UserError(f"model_parallelism={model_parallelism} does not divide the "
                       f"{len(devices)} devices")
    data_parallelism = len(devices) // model_parallelism
  size = data_parallelism * model_parallelism
  if size > len(devices) or size < 1:
    raise errors.UserError(f"mesh {data_parallelism}x{model_parallelism} needs {size} "
                     f"devices; {len(devices)} are available")
  if size < len(devices):
    if jax.process_count() > 1:
      raise errors.UserError(f"mesh {data_parallelism}x{model_parallelism} leaves devices "
                       "out; a multi-process mesh must use all of them")
    devices = devices[:size]
  shape = (data_parallelism, model_parallelism)
  try:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    device_array = mesh_utils.create_device_mesh(shape, devices=devices,
                                                 allow_split_physical_axes=True)
  except (ImportError, AttributeError, ValueError, NotImplementedError, AssertionError):
    # (No topology-aware layout for these devices, or a jax without mesh_utils.)
    device_array = np.asarray(devices).reshape(shape)
  mesh = Mesh(device_array, (DATA_AXIS, MODEL_AXIS))
  platforms.log_mesh(mesh)
  return mesh


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which slice of the global batch this process feeds."""

  global_batch_size: int
  shard_id: int
  num_shards: int

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.num_shards

  @property
  def local_slice(self) -> slice:
    start = self.shard_id * self.local_batch_size
    return slice(start, start + self.local_batch_size)


class Partitioner:
  """Maps logical axis names to shardings on a mesh and partitions functions."""

  def __init__(self, mesh: Mesh, logical_axis_rules: Optional[LogicalAxisRules] = None):
    self.mesh = mesh
    self.rules = tuple(logical_axis_rules or standard_logical_axis_rules())
    self._check_rules()

  def _check_rules(self):
    for rule in self.rules:
      if len(rule) != 2 or not isinstance(rule[0], str):
        raise errors.UserError(f"logical axis rule {rule!r} is not (name, mesh_axes)")
      axes = rule[1] if isinstance(rule[1], tuple) else (rule[1],)
      for axis in axes:
        if axis is not None and axis not in self.mesh.axis_names:
          raise errors.UserError(f"logical axis rule {rule!r} names mesh axis {axis!r}; the "
                           f"mesh has {self.mesh.axis_names}")

  @contextlib.contextmanager
  def activate(self):
    """Makes the mesh and rules current, for activation sharding constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def logical_to_mesh_axes(self, logical: Sequence[Optional[str]]) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(logical), self.rules)

  def sharding(self, logical: Sequence[Optional[str]]) -> NamedSharding:
    return NamedSharding(self.mesh, self.logical_to_mesh_axes(logical))

  def param_specs(self, boxed_tree: Any) -> Any:
    """Mesh PartitionSpecs for a tree of `nn.LogicallyPartitioned` leaves."""
    logical = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh(logical, self.rules)

  def param_shardings(self, boxed_tree: Any) -> Any:
    specs = self.param_specs(boxed_tree)
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def logical_shardings(self, logical_specs: Any) -> Any:
    """Shardings of a tree whose leaves are `PartitionSpec`s of logical axis
    names (as `training.optimizers.state_logical_axes` derives for a whole
    train state), through the rules. Passed to jit as in/out shardings, the
    layout is the rules', not whatever XLA's propagation would choose."""
    return jax.tree.map(
        lambda spec: NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(spec),
                                                                      self.rules)),
        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def data_sharding(self, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch-major array: batch over `data`, rest replicated."""
    return self.sharding(("batch",) + (None,) * (ndim - 1))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def init(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> tuple[Any, Any]:
    """Runs a boxed-parameter initialiser directly into sharded parameters.

    Returns `(params, shardings)`; no host ever holds the full parameters.
    """
    abstract = jax.eval_shape(init_fn, rng)
    shardings = self.param_shardings(abstract)
    jitted = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)
    with self.activate():
      return jitted(rng), shardings

  def partition(self, fn: Callable, in_shardings: Any = None, out_shardings: Any = None,
                donate_argnums: Sequence[int] = (),
                static_argnums: Sequence[int] = ()) -> Callable:
    """`jax.jit` with shardings; calls run with the mesh and rules active."""
    kwargs = {}
    if in_shardings is not None:
      kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
      kwargs["out_shardings"] = out_shardings
    jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums),
                     static_argnums=tuple(static_argnums), **kwargs)
    return PartitionedFunction(jitted, self)

  def data_layout(self, global_batch_size: int) -> DataLayout:
    """The contiguous slice of the global batch that this process supplies."""
    data_size = self.mesh.shape[DATA_AXIS]
    if global_batch_size % data_size:
      raise errors.UserError(f"batch size {global_batch_size} does not split evenly over "
                       f"the {data_size}-way data axis")
    sharding = self.data_sharding(1)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    slices = sorted({(s[0].start or 0, s[0].stop or global_batch_size)
                     for s in index_map.values()})
    start, stop = slices[0][0], slices[-1][1]
    local = stop - start
    if global_batch_size % local or start % local or \
        sum(b - a for a, b in slices) != local:
      raise errors.UserError(f"batch size {global_batch_size} does not split evenly over "
                       f"the {self.mesh.shape[DATA_AXIS]}-way data axis")
    return DataLayout(global_batch_size, start // local, global_batch_size // local)

  def shard_batch(self, local_batch: Any) -> Any:
    """Builds global arrays from this process's slice of a batch (see data_layout)."""
    def put(x):
      x = np.asarray(x)
      sharding = self.data_sharding(x.ndim)
      if jax.process_count() == 1:
        return jax.device_put(x, sharding)
      return jax.make_array_from_process_local_data(sharding, x)
    return jax.tree.map(put, local_batch)


def bytes_per_device(abstract: Any, shardings: Any) -> dict[Any, int]:
  """Bytes each device would hold of a tree placed with `shardings`, from
  shapes alone (`jax.eval_shape` trees): a memory plan before any allocation."""
  out: dict[Any, int] = {}
  for x, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))):
    itemsize = np.dtype(x.dtype).itemsize
    for device, index in sharding.devices_indices_map(tuple(x.shape)).items():
      size = 1
      for dim, part in zip(x.shape, index):
        start, stop, _ = part.indices(dim)
        size *= stop - start
      out[device] = out.get(device, 0) + size * itemsize
  return out


class PartitionedFunction:
  """A jitted function that runs with its partitioner's mesh and rules active."""

  def __init__(self, jitted: Callable, partitioner: Partitioner):
    self._jitted = jitted
    self._partitioner = partitioner

  def __call__(self, *args, **kwargs):
    with self._partitioner.activate():
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with self._partitioner.activate():
      return self._jitted.lower(*args, **kwargs)


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None) -> None:
  """`jax.distributed.initialize`, with gloo collectives when running on CPU.

  On TPU pods and Slurm/GPU clusters all arguments may be left out: JAX finds
  them from the environment. Call once per process, before using devices.
  """
  if jax.distributed.is_initialized():
    return
  # Only CPU devices use this setting; without it they cannot run collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
