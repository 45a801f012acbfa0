"""The one weight loader: an HF folder, a t5x checkpoint or a model dir, onto a mesh.

`load(path)` returns the model (`models.base.BaseModel`, its family read from
what the path holds), its parameters and its vocabulary. The kinds of path are
the registry `SOURCES` (each a `detect` and a `read`, tried in order); what a
family knows about its files (its Hugging Face model types, the vocabulary file
its folders carry, whether it reads GGUF) is on the family (`families`):

| path | model from | parameters |
|---|---|---|
| one of our model dirs | the checkpoint's meta (`families.from_json`) | its best checkpoint when its run marked one, else its latest (`checkpoints.locate`: `<dir>/checkpoints`, `<dir>/checkpoints/<step>`) |
| a Hugging Face folder (`config.json`) | `config.json`'s `model_type` (`families.hf_family`) | its safetensors (or `pytorch_model.bin`) |
| a t5x checkpoint (`convert.t5x.locate`) | the caller's `model` (t5x stores no config) | its `target` |
| a GGUF file (`.gguf`, the Llama family) | its metadata | its tensors, dequantised |

A Hugging Face folder or GGUF file read with a pretrained tokenizer as the
vocabulary (`hf_tokenizer`: its own `tokenizer.json` or GGUF metadata unless
`vocabulary` names another) has its embedding rows put in the project's id order
(pad 0, EOS 1) and the table sized to the model's `vocab_size`.

Initial weights of both phases, the DPO reference, evaluation, sampling and
export all load through here. With a `model` given, the stored architecture
must match it (`binding` names the setting at fault) and its dtypes and layer
layout are used (parameters saved unscanned load into a `scan_layers` config
and back, `model.convert_params`).

With a `partitioner` (or `shardings`, a tree like the parameters) the
parameters are placed on its mesh as its logical-axis rules shard them: our
checkpoints are restored straight into those shards (only the parameters: the
optimizer state is never read), so no device, and no host, holds a full copy;
HF and t5x weights pass through host memory one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

import flax.linen as nn
import jax

from tinythinker_jax import checkpoints, errors, families, partitioning, paths, registries
from tinythinker_jax.tokenizers import hf_tokenizer
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.paths import PathLike

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedWeights:
  model: BaseModel
  params: Any  # host arrays, or on the mesh of `load`'s partitioner; None: not read
  vocabulary: str  # "" when neither the checkpoint nor the caller names one
  source: str

  @property
  def config(self) -> Any:
    return self.model.config


def read_checkpoint_meta(path: PathLike) -> dict:
  """The JSON meta of the checkpoint a model path means (`checkpoints.locate`)."""
  where = checkpoints.locate(path)
  if not paths.as_path(where.directory).is_dir():
    raise errors.MissingFileError(f"{path}: no checkpoints")
  checkpointer = checkpoints.Checkpointer(where.directory, create=False)
  try:
    return checkpointer.read_meta(where.step)
  finally:
    checkpointer.close()


def model_from_meta(meta: dict) -> BaseModel:
  """The model a checkpoint's meta records."""
  return families.from_json(meta)


# Config fields that fix the parameters' shapes (the rest: dtypes, dropout, layout).
ARCHITECTURE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                       "num_decoder_layers", "vocab_size", "mlp_activations",
                       "logits_via_embedding", "num_layers", "num_kv_heads",
                       "tie_word_embeddings")


def _check_architecture(stored: BaseModel, wanted: BaseModel, where: str) -> None:
  if type(stored) is not type(wanted):
    raise errors.UserError(f"{where}: a {stored.family} model, but the model config is "
                           f"{wanted.family}")
  for field in ARCHITECTURE_FIELDS:
    if getattr(stored.config, field, None) != getattr(wanted.config, field, None):
      raise errors.UserError(
          f"{where}: {field}={getattr(stored.config, field, None)!r} in the checkpoint, "
          f"but the model config has {getattr(wanted.config, field, None)!r}")


def _with_stored_template(stored: BaseModel, wanted: BaseModel, where: str) -> BaseModel:
  """`wanted`, keeping the chat template a checkpoint's student was trained with
  (`prompt_prefix_ids`/`prompt_suffix_ids`) when the model config gives none."""
  fields = ("prompt_prefix_ids", "prompt_suffix_ids")
  ours = tuple(tuple(getattr(stored.config, f, ()) or ()) for f in fields)
  theirs = tuple(tuple(getattr(wanted.config, f, ()) or ()) for f in fields)
  if not any(ours) or ours == theirs:
    return wanted
  if any(theirs):
    raise errors.UserError(f"{where}: trained with another chat template than the model "
                           "config's (prompt_prefix_ids / prompt_suffix_ids)")
  return type(wanted)(dataclasses.replace(wanted.config, **dict(zip(fields, ours))))


def _t5x_checkpoint(path: PathLike):
  """The t5x checkpoint `path` names, unless it is one of our model dirs."""
  from tinythinker_jax.convert import t5x  # pylint: disable=import-outside-toplevel
  if paths.as_path(checkpoints.locate(path).directory).is_dir():
    return None  # ours: `<model_dir>/checkpoints/<step>/state` is orbax too.
  return t5x.locate(str(path))


@dataclasses.dataclass
class _Stored:
  """What a source read: its kind ('hf' weights in host memory, 't5x', 'ours'),
  the model it holds, host parameters (None: restored later) and vocabulary."""
  kind: str
  model: BaseModel
  host_params: Any
  vocabulary: str


@dataclasses.dataclass(frozen=True)
class Source:
  """A kind of path weights are read from: `detect(path)` says whether `path` is
  one; `read(path, wanted, vocabulary, where)` reads its model (and, where the
  weights pass through host memory, its parameters)."""
  detect: Callable[[str], bool]
  read: Callable[[str, Optional[BaseModel], str, str], _Stored]


def _read_gguf(path: str, wanted, vocabulary: str, where: str) -> _Stored:
  stored, params = families.gguf_family(path).load_gguf(path)
  return _Stored("hf", stored, params, vocabulary or path)


def _read_hf(path: str, wanted, vocabulary: str, where: str) -> _Stored:
  family = families.hf_family(paths.read_json(paths.as_path(path) / "config.json"),
                              f"{path}/config.json")
  stored, params = family.load_hf(path)
  return _Stored("hf", stored, params, vocabulary or family.hf_vocabulary(path))


def _read_t5x(path: str, wanted, vocabulary: str, where: str) -> _Stored:
  if wanted is None:
    raise errors.UserError(
        f"{where}: a t5x checkpoint ({_t5x_checkpoint(path).layout}) does not store its "
        "model config; give the model's gin file (e.g. models/t5_1_1/small.gin)")
  return _Stored("t5x", wanted, None, vocabulary)


def _read_ours(path: str, wanted, vocabulary: str, where: str) -> _Stored:
  try:
    meta = read_checkpoint_meta(path)
  except FileNotFoundError as e:
    names = list(SOURCES)
    raise errors.MissingFileError(
        f"{where}: neither {', '.join(names[:-1])} nor {names[-1]} ({e})") from None
  return _Stored("ours", model_from_meta(meta), None,
                 vocabulary or meta.get("vocabulary", ""))


# Tried in order; the first whose `detect` holds reads the path.
SOURCES: registries.Registry[Source] = registries.Registry("weight source")
SOURCES.register("a GGUF file", Source(lambda p: p.endswith(".gguf"), _read_gguf))
SOURCES.register("a Hugging Face folder (config.json)", Source(
    lambda p: (paths.as_path(p) / "config.json").exists(), _read_hf))
SOURCES.register("a t5x checkpoint", Source(lambda p: _t5x_checkpoint(p) is not None,
                                            _read_t5x))
SOURCES.register("a model dir with checkpoints", Source(lambda p: True, _read_ours))


def load(path: PathLike, *, model: Any = None, vocabulary: str = "",
         require_vocabulary: bool = True, binding: str = "",
         partitioner: Optional[partitioning.Partitioner] = None,
         shardings: Any = None, with_params: bool = True) -> LoadedWeights:
  """The model, parameters and vocabulary `path` holds; see the module docstring.

  `model` is a `BaseModel` or a model config (gin's `MODEL_CONFIG`);
  `with_params=False` reads only the model and vocabulary (an HF folder, whose
  tying is read from its weights, is read whole).
  """
  path = str(path)
  where = f"{binding}={path}" if binding else path
  wanted = None if model is None else families.from_config(model)
  source = next(s for s in SOURCES.values() if s.detect(path))
  read = source.read(path, wanted, vocabulary, where)
  kind, stored, host_params, vocab = read.kind, read.model, read.host_params, read.vocabulary
  if kind == "hf" and hf_tokenizer.is_hf_tokenizer(vocab):
    # pylint: disable=import-outside-toplevel
    from tinythinker_jax.tokenizers import vocabularies
    codec = vocabularies.load_pretrained(vocab)
    rows = wanted.config.vocab_size if wanted is not None else max(
        codec.vocab_size, stored.config.vocab_size + codec.vocab_size - codec.hf_vocab_size)
    stored, host_params = stored.map_vocabulary_rows(
        host_params, lambda table: codec.to_project_rows(table, rows))
  loaded_model = stored
  if wanted is not None:
    _check_architecture(stored, wanted, where)
    loaded_model = _with_stored_template(stored, wanted, where)
  if require_vocabulary and not vocab:
    raise errors.UserError(f"{where}: the checkpoint names no vocabulary (no "
                           "spiece.model or recorded vocabulary); set VOCABULARY")
  params = None
  if with_params:
    if shardings is None and partitioner is not None:
      shardings = param_shardings(loaded_model, partitioner)
    if kind == "t5x":
      host_params = loaded_model.load_t5x(path)
    elif kind == "ours" and stored.scan_layers != loaded_model.scan_layers:
      # Saved in the other layer layout: through host memory, then restacked.
      host_params = _restore_params(path, stored, None, where)
    if host_params is not None:
      host_params = loaded_model.convert_params(host_params)
      params = (host_params if shardings is None else
                jax.tree.map(jax.device_put, host_params, shardings))
    else:
      params = _restore_params(path, loaded_model, shardings, where)
  return LoadedWeights(loaded_model, params, vocab, path)


def param_shardings(model: Any, partitioner: partitioning.Partitioner) -> Any:
  """The shardings the partitioner's rules give the model's parameters."""
  return partitioner.param_shardings(families.from_config(model).abstract_params())


def _restore_params(path: str, model: BaseModel, shardings: Any, where: str) -> Any:
  location = checkpoints.locate(path)
  abstract = nn.unbox(model.abstract_params())
  checkpointer = checkpoints.Checkpointer(location.directory, create=False)
  try:
    params = checkpointer.restore_params(location.step, shardings, abstract=abstract,
                                         source=where)
  finally:
    checkpointer.close()
  if location.best:
    log.info("%s: the best checkpoint (step %s)", path, location.step)
  return params
