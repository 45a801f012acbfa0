"""The weight files of a Hugging Face model folder, whatever the architecture.

Reads weights in any of the layouts `save_pretrained` writes:
`model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
or `pytorch_model.bin` (and its sharded index), the last only through
`torch.load(weights_only=True)`; writes safetensors, sharded with an index
above a size. Paths may be on an object store (read and written whole).
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from tinythinker_jax import errors, paths

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def weight_files(path: paths.PathLike) -> tuple[str, list[str]]:
  """Returns (format, files) for the weights in a Hugging Face folder."""
  def join(name):
    return str(paths.as_path(path) / name)
  for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (PYTORCH_BIN_INDEX, "torch")):
    if paths.as_path(join(index_name)).exists():
      try:
        weight_map = paths.read_json(join(index_name))["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise errors.UserError(f"{join(index_name)}: not a valid index file ({e})") from e
      return fmt, [join(n) for n in sorted(set(weight_map.values()))]
  if paths.as_path(join(SAFETENSORS)).exists():
    return "safetensors", [join(SAFETENSORS)]
  if paths.as_path(join(PYTORCH_BIN)).exists():
    return "torch", [join(PYTORCH_BIN)]
  raise errors.MissingFileError(
      f"{path}: no {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH_BIN} or "
      f"{PYTORCH_BIN_INDEX} found")


def read_folder(path: paths.PathLike) -> tuple[dict, str, dict[str, np.ndarray]]:
  """(`config.json` as a dict, its path, every weight tensor) of a Hugging Face
  model folder, with errors that name the file."""
  config_path = paths.as_path(path) / "config.json"
  try:
    hf_config = paths.read_json(config_path)
  except FileNotFoundError:
    raise errors.MissingFileError(f"{config_path}: not found; is {path} a Hugging Face "
                                  "model folder?") from None
  except json.JSONDecodeError as e:
    raise errors.UserError(f"{config_path}: invalid JSON: {e}") from e
  return hf_config, str(config_path), read_tensors(*weight_files(path))


def read_tensors(fmt: str, files: Iterable[str]) -> dict[str, np.ndarray]:
  """Every tensor of `files` (of `weight_files`' format) as numpy arrays."""
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    if fmt == "safetensors" and paths.is_remote(file):  # Read whole: no mmap there.
      tensors.update(safetensors.numpy.load(paths.as_path(file).read_bytes()))
    elif fmt == "safetensors":
      with safetensors.safe_open(file, framework="numpy") as f:
        for name in f.keys():
          tensors[name] = f.get_tensor(name)
    else:
      try:
        import torch  # pylint: disable=import-outside-toplevel
      except ImportError as e:
        raise ImportError(f"{file}: reading pytorch_model.bin needs torch; install it "
                          "or convert the folder to safetensors") from e
      source = io.BytesIO(paths.as_path(file).read_bytes()) if paths.is_remote(file) \
          else file
      state = torch.load(source, map_location="cpu", weights_only=True)
      for name, value in state.items():
        tensors[name] = value.float().numpy() if value.dtype == torch.bfloat16 else \
            value.numpy()
  return tensors


def _save_safetensors(tensors: Mapping[str, np.ndarray], path: paths.PathLike,
                      metadata: dict[str, str]) -> None:
  if paths.is_remote(path):
    paths.write_bytes(path, safetensors.numpy.save(dict(tensors), metadata=metadata))
  else:
    safetensors.numpy.save_file(dict(tensors), os.fspath(path), metadata=metadata)


def save_tensors(tensors: Mapping[str, np.ndarray], path: paths.PathLike, *,
                 max_shard_bytes: int) -> None:
  """Writes `tensors` as safetensors in folder `path`: one `model.safetensors`,
  or shards with `model.safetensors.index.json` above `max_shard_bytes`."""
  path = paths.as_path(path)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  metadata = {"format": "pt"}
  if len(shards) == 1:
    _save_safetensors(shards[0], path / SAFETENSORS, metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    _save_safetensors(shard, path / name, metadata)
    weight_map.update({k: name for k in shard})
  total = sum(v.nbytes for v in tensors.values())
  paths.write_json(path / SAFETENSORS_INDEX,
                   {"metadata": {"total_size": total}, "weight_map": weight_map})


class TensorReader:
  """A checkpoint's named tensors, each taken with its expected shape checked;
  what was never taken is reported by `unused` (errors name `where`)."""

  def __init__(self, tensors: Mapping[str, np.ndarray], where: str):
    self.tensors = tensors
    self.where = where
    self.used: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise errors.UserError(f"{self.where}: weight {name!r} is missing")
    value = self.tensors[name]
    if value.shape != shape:
      raise errors.UserError(f"{self.where}: weight {name!r} has shape {value.shape}; the "
                             f"config implies {shape}")
    self.used.add(name)
    return value

  def check_all_used(self, family: str, ignore=lambda name: False) -> None:
    """A `UserError` naming the tensors `family` does not read (but `ignore`s)."""
    unused = sorted(n for n in set(self.tensors) - self.used if not ignore(n))
    if unused:
      raise errors.UserError(f"{self.where}: weights {family} does not read: "
                             f"{unused[:5]}{' ...' if len(unused) > 5 else ''}")
