"""Which accelerator a run is on: logged once, checked, and what follows from it.

- `describe()`: backend, device kind and count, process count.
- `start(required, activation_dtype)`: every binary calls it once its gin
  config is parsed (and, on several hosts, after `jax.distributed` is up). It
  prints one line (process 0) and, with gin's `REQUIRED_PLATFORM = 'tpu'`
  (or 'gpu', 'cpu'), fails fast when JAX runs elsewhere: a TPU VM without
  `libtpu` or a GPU host without the CUDA plugin otherwise falls back to the
  host's CPU without a word.
- `activation_dtype('auto')`: the precision default by platform (t5x's): bfloat16
  activations on TPUs and GPUs, float32 on CPUs, whose XLA backend has no
  native bfloat16 arithmetic. Parameters stay float32 everywhere.
- `peak_flops(devices, dtype)`: the devices' dense peak, for model-FLOPs
  utilisation (`benchmarks/`).
- `memory_metrics(devices)`: the devices' peak bytes in use, where the backend
  reports it (TPU, GPU; not XLA's CPU client).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

from tinythinker_jax import errors

log = logging.getLogger(__name__)

AUTO = "auto"
# REQUIRED_PLATFORM values -> JAX's backend names.
_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}
_ACCELERATORS = ("gpu", "tpu")
_INSTALL_HINT = {
    "gpu": "on a GPU host install the CUDA extra (`make install-gpu`, or pip install "
           "'tinythinker_jax[cuda12]'; '[cuda13]' for CUDA 13 drivers) and check that "
           "`nvidia-smi` lists the GPUs",
    "tpu": "on a TPU VM install the TPU extra (`make install-tpu`, or pip install "
           "'tinythinker_jax[tpu]'), and make sure no other process holds the TPU",
    "cpu": "unset REQUIRED_PLATFORM, or run with JAX_PLATFORMS=cpu",
}


class PlatformError(errors.UserError):
  """JAX runs on another platform than `REQUIRED_PLATFORM` names."""


def describe() -> dict[str, Any]:
  """What JAX runs on, from this process's view."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "process_index": jax.process_index()}


def check(required: Optional[str], info: Optional[Mapping[str, Any]] = None) -> None:
  """Raises `PlatformError` when `required` (gin: REQUIRED_PLATFORM) is set and
  JAX's backend is another one."""
  if not required:
    return
  wanted = _PLATFORMS.get(str(required).lower())
  if wanted is None:
    raise PlatformError(f"REQUIRED_PLATFORM={required!r}: expected one of "
                        f"{sorted(_PLATFORMS)}")
  info = dict(info or describe())
  if info["backend"] != wanted:
    raise PlatformError(
        f"REQUIRED_PLATFORM={required!r}, but JAX runs on {info['backend']!r} "
        f"({info['device_count']} x {info['device_kind']}, {info['process_count']} "
        f"process(es)); {_INSTALL_HINT[wanted]}")


def activation_dtype(dtype: str, backend: Optional[str] = None) -> str:
  """`dtype`, with 'auto' resolved for `backend` (default: JAX's)."""
  if dtype != AUTO:
    return dtype
  if backend is None:
    import jax  # pylint: disable=import-outside-toplevel
    backend = jax.default_backend()
  return "bfloat16" if backend in _ACCELERATORS else "float32"


def summary(info: Mapping[str, Any], activations: Optional[str] = None) -> str:
  line = (f"platform: backend={info['backend']}, {info['device_count']} x "
          f"{info['device_kind']} ({info['local_device_count']} local), "
          f"processes={info['process_count']}")
  if activations:
    resolved = activation_dtype(activations, info["backend"])
    setting = f" (ACTIVATION_DTYPE={activations!r})" if activations == AUTO else ""
    line += f"; precision: activations {resolved}{setting}, parameters float32"
  else:  # A loaded model's own dtype decides; 'auto' (the default) resolves to this.
    line += (f"; precision: models with dtype 'auto' compute in "
             f"{activation_dtype(AUTO, info['backend'])}")
  return line


_started: list[str] = []


def start(required: Optional[str] = None, activation_dtype_setting: Optional[str] = None,
          prog: str = "tinythinker") -> dict[str, Any]:
  """Logs the platform once per process (printed by process 0) and checks it."""
  info = describe()
  line = summary(info, activation_dtype_setting)
  if line not in _started:
    _started.append(line)
    log.info(line)
    if info["process_index"] == 0:
      print(f"{prog}: {line}", file=sys.stderr, flush=True)
  check(required, info)
  return info


_meshes: list[tuple] = []


def log_mesh(mesh) -> None:
  """Logs a mesh's axes the first time this process builds one of its shape."""
  key = tuple(mesh.shape.items())
  if key in _meshes:
    return
  _meshes.append(key)
  import jax  # pylint: disable=import-outside-toplevel
  line = ("mesh: " + " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
          + f" over {mesh.devices.size} devices, {jax.process_count()} process(es)")
  log.info(line)
  if jax.process_index() == 0:
    print(f"tinythinker: {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ peaks

# Dense peak TFLOP/s per chip from the vendors' data sheets: bfloat16, and
# float32 as XLA runs it by default (TF32 tensor cores on NVIDIA GPUs since
# Ampere; one bfloat16 pass on TPUs). Matched in order against the lower-cased
# `device_kind`, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    # (device_kind contains, bfloat16, float32)
    ("h100 pcie", 756.0, 378.0),
    ("h100 nvl", 835.0, 417.5),
    ("h100", 989.4, 494.7),
    ("h200", 989.4, 494.7),
    ("gh200", 989.4, 494.7),
    ("a100", 312.0, 156.0),
    ("tpu v4 lite", 137.5, 137.5),  # v4i
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),
    ("tpu v5e", 197.0, 197.0),
    ("tpu v5p", 459.0, 459.0),
    ("tpu v5", 459.0, 459.0),  # v5p reports itself as 'TPU v5'
    ("tpu v6 lite", 918.0, 918.0),
    ("tpu v6e", 918.0, 918.0),
)


def _cpuinfo(field: str) -> Optional[str]:
  """The first `field : value` of /proc/cpuinfo (None off Linux, or if absent)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith(field):
          return line.split(":", 1)[1]
  except OSError:
    pass
  return None


def cpu_flops_per_cycle(flags: Iterable[str]) -> int:
  """float32 FLOPs per cycle and core: vector lanes x 2 (FMA) x 2 FMA units."""
  flags = set(flags)
  if "avx512f" in flags:
    return 16 * 2 * 2
  if "avx2" in flags and "fma" in flags:
    return 8 * 2 * 2
  return 4 * 2 * 2  # SSE


@functools.lru_cache(maxsize=None)
def cpu_peak_tflops() -> Optional[float]:
  """This host's float32 peak: cores (this process's affinity) x clock (from
  /proc/cpuinfo) x FLOPs per cycle by vector ISA. An estimate: turbo and shared
  cores move it; pass `--peak_tflops` to a benchmark to use a measured one.
  bfloat16 has the same peak (XLA's CPU backend computes it in float32)."""
  mhz = _cpuinfo("cpu MHz")
  try:
    ghz = float(mhz) / 1000.0
  except (TypeError, ValueError):
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
      os.cpu_count() or 1
  return cores * ghz * cpu_flops_per_cycle((_cpuinfo("flags") or "").split()) / 1000.0


def peak_tflops(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
  """One chip's dense peak for `dtype`, or None when the kind is not in the table."""
  kind = device_kind.lower()
  for name, bf16, fp32 in PEAK_TFLOPS:
    if name in kind:
      return bf16 if dtype in ("bfloat16", "float16") else fp32
  return None


def peak_flops(devices: Sequence[Any], dtype: str = "bfloat16") -> Optional[float]:
  """All `devices`' peak FLOP/s (CPU devices share one host: the host's peak)."""
  if not devices:
    return None
  if devices[0].platform == "cpu":
    tflops = cpu_peak_tflops()
    return None if tflops is None else tflops * 1e12
  one = peak_tflops(devices[0].device_kind, dtype)
  return None if one is None else one * 1e12 * len(devices)


# ------------------------------------------------------------------ memory


def memory_metrics(devices: Sequence[Any]) -> dict[str, float]:
  """The largest peak and current bytes in use over `devices`, where reported."""
  peaks, in_use = [], []
  for device in devices:
    try:
      stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
      stats = None
    if not stats:
      continue
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
    if "bytes_in_use" in stats:
      in_use.append(stats["bytes_in_use"])
  metrics = {}
  if peaks:
    metrics["peak_bytes_per_device"] = float(max(peaks))
  if in_use:
    metrics["bytes_in_use_per_device"] = float(max(in_use))
  return metrics
