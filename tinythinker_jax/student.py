"""A trained student as a text-in, text-out function: batched, sharded, jitted.

`Student` holds a T5's parameters on a device mesh and a TF-free text codec.
`generate` turns prompts into sampled or greedy continuations (with the model's
log-probabilities); `score` gives the log-likelihood of given targets. Both
pad the batch to a fixed number of rows (a multiple of the data axis) and the
inputs to length buckets, so a long run compiles a handful of programs, and
shard rows over the mesh's `data` axis. The staged inference chain and the
self-reflection sampler (`tinythinker_jax.reasoning`) are handed `generate`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax import compute as compute_lib
from tinythinker_jax import decoding, errors, partitioning, paths, vocabularies
from tinythinker_jax.paths import PathLike
from tinythinker_jax.models import flops, t5
from tinythinker_jax.reasoning.chains import Generation, Sampling
from tinythinker_jax.training import models as training_models

log = logging.getLogger(__name__)


def _buckets(maximum: int, smallest: int = 16) -> list[int]:
  out, size = [], smallest
  while size < maximum:
    out.append(size)
    size *= 2
  return out + [maximum]


def config_from_meta(meta: dict) -> t5.T5Config:
  fields = dict(meta["model_config"])
  fields["mlp_activations"] = tuple(fields["mlp_activations"])
  return t5.T5Config(**fields)


def read_checkpoint_meta(path: PathLike) -> dict:
  """The JSON meta of the checkpoint a model path means (`checkpoints.locate`)."""
  from tinythinker_jax import checkpoints  # pylint: disable=import-outside-toplevel
  where = checkpoints.locate(path)
  if not paths.as_path(where.directory).is_dir():
    raise errors.MissingFileError(f"{path}: no checkpoints")
  checkpointer = checkpoints.Checkpointer(where.directory, create=False)
  try:
    return checkpointer.read_meta(where.step)
  finally:
    checkpointer.close()


@dataclasses.dataclass
class LoadedStudent:
  config: t5.T5Config
  params: Any  # host arrays, or on the mesh of `load`'s partitioner; None: not read
  vocabulary: str  # "" when neither the checkpoint nor the caller names one
  source: str


ARCHITECTURE_FIELDS = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                       "num_decoder_layers", "vocab_size", "mlp_activations",
                       "logits_via_embedding")


def _t5x_checkpoint(path: PathLike):
  """The t5x checkpoint `path` names, unless it is one of our model dirs."""
  from tinythinker_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.convert import t5x  # pylint: disable=import-outside-toplevel
  if paths.as_path(checkpoints.locate(path).directory).is_dir():
    return None  # ours: `<model_dir>/checkpoints/<step>/state` is orbax too.
  return t5x.locate(str(path))


def load(path: PathLike, *, model_config: Optional[t5.T5Config] = None, vocabulary: str = "",
         require_vocabulary: bool = True, binding: str = "",
         partitioner: Optional[partitioning.Partitioner] = None,
         shardings: Any = None, with_params: bool = True) -> LoadedStudent:
  """Parameters, config and vocabulary from a model dir, an HF folder or a t5x checkpoint.

  A model dir gives its best checkpoint when its run marked one (selection by
  validation chain accuracy), else its latest; `<model_dir>/checkpoints` asks
  for the latest and `<model_dir>/checkpoints/<step>` for one step
  (`checkpoints.locate`).

  A t5x checkpoint (`convert.t5x.locate`: a t5x model dir, step dir, orbax
  `state/` folder or msgpack `checkpoint` file) stores no config: it needs
  `model_config`, and its vocabulary is `vocabulary`.

  The one loader for "an HF folder, a t5x checkpoint or one of our model
  dirs": initial weights of both phases, the DPO reference, evaluation,
  sampling and export use it.
  A model dir's checkpoint meta records the model config and the vocabulary it
  was trained with. With `model_config` given, the stored architecture must
  match it (`binding` names the setting in the error) and its dtypes and layer
  layout are used: parameters saved unscanned load into a `scan_layers` config
  and the other way round (`t5.convert_params`).

  With a `partitioner`, the parameters are placed on its mesh as its
  logical-axis rules shard them (or onto `shardings`, a tree of them shaped
  like the parameters); without either they are host arrays. A model dir's
  checkpoint is restored straight into those shards (only its parameters: the
  optimizer state is never read), so no device, and no host, holds a full copy
  of a sharded parameter; HF and t5x weights, and a checkpoint loaded into the
  other layer layout, pass through host memory one tensor at a time.
  `with_params=False` reads only the config and vocabulary (for an HF folder,
  whose tying is read from its weights, after reading them).
  """
  path = str(path)
  where = f"{binding}={path}" if binding else path
  kind, host_params = "ours", None
  if (paths.as_path(path) / "config.json").exists():
    from tinythinker_jax.convert import load_hf_t5  # pylint: disable=import-outside-toplevel
    kind = "hf"
    config, host_params = load_hf_t5(path)
    spiece = paths.as_path(path) / "spiece.model"
    vocab = vocabulary or (str(spiece) if spiece.exists() else "")
  elif (t5x_location := _t5x_checkpoint(path)) is not None:
    if model_config is None:
      raise errors.UserError(
          f"{where}: a t5x checkpoint ({t5x_location.layout}) does not store its model "
          "config; give the model's gin file (e.g. models/t5_1_1/small.gin)")
    kind = "t5x"
    config = model_config
    vocab = vocabulary
  else:
    try:
      meta = read_checkpoint_meta(path)
    except FileNotFoundError as e:
      raise errors.MissingFileError(
          f"{where}: neither a Hugging Face folder (config.json), a t5x checkpoint nor a "
          f"model dir with checkpoints ({e})") from None
    config = config_from_meta(meta)
    vocab = vocabulary or meta.get("vocabulary", "")
  stored_scanned = config.scan_layers
  if model_config is not None:
    for field in ARCHITECTURE_FIELDS:
      if getattr(config, field) != getattr(model_config, field):
        raise errors.UserError(
            f"{where}: {field}={getattr(config, field)!r} in the checkpoint, but the "
            f"model config has {getattr(model_config, field)!r}")
    config = model_config
  if require_vocabulary and not vocab:
    raise errors.UserError(f"{where}: the checkpoint names no vocabulary (no "
                           "spiece.model or recorded vocabulary); set VOCABULARY")
  params = None
  if with_params:
    if shardings is None and partitioner is not None:
      shardings = param_shardings(config, partitioner)
    if kind == "t5x":  # t5x's layers are named one by one (unscanned).
      from tinythinker_jax.convert import t5x  # pylint: disable=import-outside-toplevel
      host_params = t5x.load_t5x_checkpoint(path, config.replace(scan_layers=False))
    elif kind == "ours" and stored_scanned != config.scan_layers:
      # Saved in the other layer layout: through host memory, then restacked.
      host_params = _restore_params(path, config.replace(scan_layers=stored_scanned),
                                    None, where)
    if host_params is not None:
      # A checkpoint or HF folder (always unscanned) loads into either layer
      # layout; then one tensor at a time from host memory into its shards.
      host_params = t5.convert_params(host_params, config)
      params = (host_params if shardings is None else
                jax.tree.map(jax.device_put, host_params, shardings))
    else:
      params = _restore_params(path, config, shardings, where)
  return LoadedStudent(config, params, vocab, path)


@functools.lru_cache(maxsize=8)
def _boxed_params(config: t5.T5Config) -> Any:
  """The config's parameter shapes with their logical axes (traced once per config:
  loading and placing a student both need them)."""
  return jax.eval_shape(lambda r: t5.init_params(config, r), jax.random.key(0))


def param_shardings(config: t5.T5Config, partitioner: partitioning.Partitioner) -> Any:
  """The shardings the partitioner's rules give `config`'s parameters."""
  return partitioner.param_shardings(_boxed_params(config))


def _restore_params(path: str, config: t5.T5Config, shardings: Any, where: str) -> Any:
  from tinythinker_jax import checkpoints  # pylint: disable=import-outside-toplevel
  location = checkpoints.locate(path)
  abstract = nn.unbox(_boxed_params(config))
  checkpointer = checkpoints.Checkpointer(location.directory, create=False)
  try:
    params = checkpointer.restore_params(location.step, shardings, abstract=abstract,
                                         source=where)
  finally:
    checkpointer.close()
  if location.best:
    log.info("%s: the best checkpoint (step %s)", path, location.step)
  return params


@dataclasses.dataclass(frozen=True)
class StudentSettings:
  """How a student is placed and batched for generation."""

  batch_size: int = 64  # rows per decode call (inputs x samples, or x beams)
  max_input_length: int = 256
  max_decode_length: int = 128
  # Greedy stages decoded by beam search with this many beams instead (t5x's
  # `num_decodes` with its beam search); the best beam by total log-probability.
  num_beams: int = 1
  data_parallelism: int = -1  # over this process's devices
  model_parallelism: int = 1


def build(model_dir: str, *, vocabulary: str = "",
          model_config: Optional[t5.T5Config] = None,
          settings: StudentSettings = StudentSettings()) -> "Student":
  """A `Student` on this process's devices (sampling is sharded by process)."""
  mesh = partitioning.create_mesh(settings.data_parallelism, settings.model_parallelism,
                                  devices=jax.local_devices())
  return Student.from_path(
      model_dir, model_config=model_config, vocabulary=vocabulary,
      partitioner=partitioning.Partitioner(mesh), batch_size=settings.batch_size,
      max_input_length=settings.max_input_length,
      max_decode_length=settings.max_decode_length, num_beams=settings.num_beams)


class Student:
  """Generation and scoring with one set of parameters on a mesh."""

  def __init__(self, config: t5.T5Config, params: Any, codec: vocabularies.TextCodec, *,
               partitioner: Optional[partitioning.Partitioner] = None,
               batch_size: int = 64, max_input_length: int = 256,
               max_decode_length: int = 128, num_beams: int = 1):
    if num_beams < 1:
      raise errors.UserError(f"StudentSettings.num_beams={num_beams}: at least 1")
    self.num_beams = num_beams
    self.config = config
    self.codec = codec
    self.partitioner = partitioner or partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.local_devices()))
    data = self.partitioner.mesh.shape[partitioning.DATA_AXIS]
    self.batch_size = -(-batch_size // data) * data
    self.max_input_length = max_input_length
    self.max_decode_length = max_decode_length
    self.model = t5.T5(config)
    if codec.vocab_size > config.vocab_size:
      raise errors.UserError(f"the vocabulary {codec.path} has {codec.vocab_size} tokens; the "
                       f"model's embedding has {config.vocab_size}")
    self.params = jax.device_put(t5.convert_params(params, config),
                                 param_shardings(config, self.partitioner))
    self._fns: dict[tuple, Any] = {}
    self.truncated_inputs = 0
    # Model FLOPs and tokens of the useful work done so far (`compute`): real
    # prompts at their padded length, each row's tokens up to its EOS.
    self.compute = compute_lib.Compute()

  @classmethod
  def from_path(cls, path: str, *, model_config: Optional[t5.T5Config] = None,
                vocabulary: str = "", **kwargs) -> "Student":
    partitioner = kwargs.pop("partitioner", None) or partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.local_devices()))
    loaded = load(path, model_config=model_config, vocabulary=vocabulary,
                  partitioner=partitioner)
    return cls(loaded.config, loaded.params, vocabularies.TextCodec(loaded.vocabulary),
               partitioner=partitioner, **kwargs)

  # ------------------------------------------------------------- batching

  def _encode_inputs(self, texts: Sequence[str]) -> list[list[int]]:
    rows = []
    for text in texts:
      ids = self.codec.encode(text) + [self.codec.eos_id]
      if len(ids) > self.max_input_length:
        # Keep the end: the stage cue ("Recall:", "Summarize:") is last.
        self.truncated_inputs += 1
        ids = ids[-self.max_input_length:]
      rows.append(ids)
    return rows

  def _pad(self, rows: list[list[int]], length: int,
           num_rows: Optional[int] = None) -> np.ndarray:
    out = np.zeros((num_rows or self.batch_size, length), np.int32)
    for i, ids in enumerate(rows):
      out[i, :len(ids)] = ids
    return out

  def _chunks(self, rows: list[list[int]], rows_per_call: int):
    for start in range(0, len(rows), rows_per_call):
      chunk = rows[start:start + rows_per_call]
      longest = max(len(r) for r in chunk)
      length = next(b for b in _buckets(self.max_input_length) if b >= longest)
      yield start, chunk, length

  def _shard(self, array: np.ndarray) -> jax.Array:
    # The mesh is this process's own (sampling is sharded by process).
    return jax.device_put(array, self.partitioner.data_sharding(array.ndim))

  # ------------------------------------------------------------ generation

  def _decode_fn(self, sampling: Sampling, num_samples: int, max_length: int):
    key = ("decode", sampling.temperature, sampling.top_k, sampling.top_p, num_samples,
           max_length, self.num_beams)
    if key not in self._fns:
      model, eos = self.model, self.codec.eos_id

      def fn(params, tokens, rng):
        if sampling.temperature == 0 and self.num_beams > 1:
          beams = decoding.beam_search(model, params, tokens, beam_size=self.num_beams,
                                       max_length=max_length, eos_id=eos)
          # The best beam, its total log-probability as the sequence's.
          result = decoding.DecodeResult(
              beams.tokens[:, 0], jnp.zeros_like(beams.tokens[:, 0], jnp.float32).at[
                  :, 0].set(beams.scores[:, 0]), beams.lengths[:, 0])
        elif sampling.temperature == 0:
          result = decoding.greedy_decode(model, params, tokens, max_length=max_length,
                                          eos_id=eos)
        else:
          result = decoding.sample_decode(
              model, params, tokens, rng, max_length=max_length, num_samples=num_samples,
              temperature=sampling.temperature, top_k=sampling.top_k,
              top_p=sampling.top_p, eos_id=eos)
        return result
      self._fns[key] = self.partitioner.partition(fn)
    return self._fns[key]

  def generate(self, prompts: Sequence[str], sampling: Sampling,
               seed: int = 0) -> list[list[Generation]]:
    """`sampling.num_samples` continuations of every prompt (1 when greedy).

    Prompt p's samples are drawn with the key `fold_in(key(seed), p)` (its
    index in `prompts`), so they do not depend on the batch size, the rows it
    shares a call with, or the number of devices; a resumed job that asks
    again gets the same text.
    """
    num = 1 if sampling.temperature == 0 else sampling.num_samples
    max_length = sampling.max_length or self.max_decode_length
    data = self.partitioner.mesh.shape[partitioning.DATA_AXIS]
    # Inputs per call: a multiple of the data axis; each is decoded `num` times
    # (or searched with `num_beams` beams).
    width = self.num_beams if sampling.temperature == 0 else num
    per_call = max(data, (self.batch_size // width) // data * data)
    fn = self._decode_fn(sampling, num, max_length)
    out: list[list[Generation]] = []
    rows = self._encode_inputs(prompts)
    # One key per prompt (and per padding row of the last call), made once.
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(-(-len(rows) // per_call) * per_call))
    for start, chunk, length in self._chunks(rows, per_call):
      tokens = self._pad(chunk, length, per_call)
      result = jax.device_get(fn(self.params, self._shard(tokens),
                                 keys[start:start + per_call]))
      for i in range(len(chunk)):
        samples = []
        self.compute.sample_flops += flops.encode_flops(self.config, length)
        self.compute.sample_tokens += len(chunk[i])
        for j in range(num):
          row = i * num + j
          n = int(result.lengths[row])
          self.compute.sample_flops += flops.decode_steps_flops(self.config, length, n) * (
              self.num_beams if sampling.temperature == 0 else 1)
          self.compute.sample_tokens += n
          ids = result.tokens[row, :n]
          finished = n < max_length or (n == max_length and ids[-1] == self.codec.eos_id)
          samples.append(Generation(
              text=self.codec.decode(ids), logprob=float(result.token_logprobs[row].sum()),
              num_tokens=n, finished=bool(finished)))
        out.append(samples)
    return out

  # --------------------------------------------------------------- scoring

  def _score_fn(self):
    if "score" not in self._fns:
      model = self.model

      def fn(params, inputs, targets):
        return training_models.target_token_logps(model, params, inputs, targets)[0]
      self._fns["score"] = self.partitioner.partition(fn)
    return self._fns["score"]

  def score(self, inputs: Sequence[str], targets: Sequence[str]) -> list[dict[str, Any]]:
    """Log-likelihood of each target (EOS included) given its input."""
    if len(inputs) != len(targets):
      raise errors.UserError(f"{len(inputs)} inputs but {len(targets)} targets")
    fn = self._score_fn()
    input_rows = self._encode_inputs(inputs)
    target_rows = [self.codec.encode(t) + [self.codec.eos_id] for t in targets]
    out = []
    for start, chunk, length in self._chunks(input_rows, self.batch_size):
      tchunk = target_rows[start:start + len(chunk)]
      longest = max(len(t) for t in tchunk)
      tlength = next(b for b in _buckets(max(self.max_decode_length, longest))
                     if b >= longest)
      token_logp = jax.device_get(fn(self.params, self._shard(self._pad(chunk, length)),
                                     self._shard(self._pad(tchunk, tlength))))
      for i, ids in enumerate(tchunk):
        self.compute.sample_flops += flops.forward_flops(self.config, 1, length, tlength)
        self.compute.sample_tokens += len(chunk[i]) + len(ids)
        values = token_logp[i, :len(ids)]
        out.append({"logprob": float(values.sum()), "num_tokens": len(ids),
                    "token_logprobs": [float(v) for v in values]})
    return out
