"""A trained student as a text-in, text-out function: batched, sharded, jitted.

`Student` holds a model's parameters (any family, through the model interface
`models.base.BaseModel`) on a device mesh and a TF-free text codec; `weights`
loads them.
`generate` turns prompts into sampled or greedy continuations (with the model's
log-probabilities); `score` gives the log-likelihood of given targets. Both
pad the batch to a fixed number of rows (a multiple of the data axis) and the
inputs to length buckets, so a long run compiles a handful of programs, and
shard rows over the mesh's `data` axis. The staged inference chain and the
self-reflection sampler (`tinythinker_jax.reasoning`) are handed `generate`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tinythinker_jax import compute as compute_lib
from tinythinker_jax import errors, families, partitioning, weights
from tinythinker_jax.tokenizers import hf_tokenizer, vocabularies
from tinythinker_jax.models.base import BaseModel
from tinythinker_jax.reasoning.chains import Generation, Sampling

log = logging.getLogger(__name__)


def _buckets(maximum: int, smallest: int = 16) -> list[int]:
  out, size = [], smallest
  while size < maximum:
    out.append(size)
    size *= 2
  return out + [maximum]


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
  # A decoder-only model read from an HF folder or GGUF (an instruct model): its
  # prompts wrapped in its tokenizer's chat template. (A student trained here
  # keeps the template it was trained with in its checkpoint.)
  chat_template: bool = False


def build(model_dir: str, *, vocabulary: str = "", model_config: Any = None,
          settings: StudentSettings = StudentSettings()) -> "Student":
  """A `Student` on this process's devices (sampling is sharded by process)."""
  mesh = partitioning.create_mesh(settings.data_parallelism, settings.model_parallelism,
                                  devices=jax.local_devices())
  return Student.from_path(
      model_dir, model_config=model_config, vocabulary=vocabulary,
      partitioner=partitioning.Partitioner(mesh), batch_size=settings.batch_size,
      max_input_length=settings.max_input_length,
      max_decode_length=settings.max_decode_length, num_beams=settings.num_beams,
      chat_template=settings.chat_template)


def with_chat_template(model_config: Any, vocabulary: str) -> Any:
  """A decoder-only config whose prompts are wrapped in `vocabulary`'s chat
  template (its tokenizer's), as token ids on the config."""
  if not hf_tokenizer.is_hf_tokenizer(vocabulary):
    raise errors.UserError(f"CHAT_TEMPLATE: the vocabulary {vocabulary!r} is not a "
                           "pretrained tokenizer (set PRETRAINED, or VOCABULARY to a "
                           "tokenizer.json or GGUF)")
  if not hasattr(model_config, "prompt_prefix_ids"):
    raise errors.UserError(f"CHAT_TEMPLATE: a {type(model_config).__name__} student has no "
                           "chat template (decoder-only students do)")
  prefix, suffix = vocabularies.load_pretrained(vocabulary).chat_wrapping()
  return dataclasses.replace(model_config, prompt_prefix_ids=prefix, prompt_suffix_ids=suffix)


class Student:
  """Generation and scoring with one set of parameters on a mesh."""

  def __init__(self, model: Any, params: Any, codec: vocabularies.TextCodec, *,
               partitioner: Optional[partitioning.Partitioner] = None,
               batch_size: int = 64, max_input_length: int = 256,
               max_decode_length: int = 128, num_beams: int = 1):
    if num_beams < 1:
      raise errors.UserError(f"StudentSettings.num_beams={num_beams}: at least 1")
    self.num_beams = num_beams
    self.model: BaseModel = families.from_config(model)  # a model or a model config
    self.config = self.model.config
    self.codec = codec
    self.partitioner = partitioner or partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.local_devices()))
    data = self.partitioner.mesh.shape[partitioning.DATA_AXIS]
    self.batch_size = -(-batch_size // data) * data
    self.max_input_length = max_input_length
    self.max_decode_length = max_decode_length
    if codec.vocab_size > self.model.vocab_size:
      raise errors.UserError(f"the vocabulary {codec.path} has {codec.vocab_size} tokens; the "
                       f"model's embedding has {self.model.vocab_size}")
    self.params = jax.device_put(self.model.convert_params(params),
                                 weights.param_shardings(self.model, self.partitioner))
    self._fns: dict[tuple, Any] = {}
    self.truncated_inputs = 0
    # Model FLOPs and tokens of the useful work done so far (`compute`): real
    # prompts at their padded length, each row's tokens up to its EOS.
    self.compute = compute_lib.Compute()

  @classmethod
  def from_path(cls, path: str, *, model_config: Any = None,
                vocabulary: str = "", **kwargs) -> "Student":
    partitioner = kwargs.pop("partitioner", None) or partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.local_devices()))
    chat_template = kwargs.pop("chat_template", False)
    loaded = weights.load(path, model=model_config, vocabulary=vocabulary,
                          partitioner=partitioner)
    model = loaded.model
    if chat_template:
      model = families.from_config(with_chat_template(
          families.from_config(model).config, loaded.vocabulary))
    return cls(model, loaded.params, vocabularies.text_codec(loaded.vocabulary),
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

  def _inputs_per_call(self, width: int) -> int:
    """Inputs per call when each takes `width` rows of the batch: a multiple of
    the data axis, at least one per device."""
    data = self.partitioner.mesh.shape[partitioning.DATA_AXIS]
    return max(data, (self.batch_size // width) // data * data)

  def _shard(self, array: np.ndarray) -> jax.Array:
    # The mesh is this process's own (sampling is sharded by process).
    return jax.device_put(array, self.partitioner.data_sharding(array.ndim))

  # ------------------------------------------------------------ generation

  def _decode_fn(self, sampling: Sampling, num_samples: int, max_length: int):
    key = ("decode", sampling.temperature, sampling.top_k, sampling.top_p, num_samples,
           max_length, self.num_beams)
    if key not in self._fns:
      model, eos, beams = self.model, self.codec.eos_id, self.num_beams

      def fn(params, tokens, rng):
        return model.decode(params, tokens, max_length=max_length, eos_id=eos, rng=rng,
                            temperature=sampling.temperature, top_k=sampling.top_k,
                            top_p=sampling.top_p, num_samples=num_samples,
                            num_beams=beams)
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
    # Each input is decoded `num` times (or searched with `num_beams` beams).
    per_call = self._inputs_per_call(self.num_beams if sampling.temperature == 0 else num)
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
      # The work the call did, as training counts its padded batches: every row
      # of it (those that only fill the batch too) through the encoder or prefill,
      # and the decode steps it ran (its longest row; a beam search runs them all).
      beams = self.num_beams if sampling.temperature == 0 else 1
      steps = max_length if beams > 1 else int(np.max(result.lengths))
      self.compute.sample_flops += per_call * (
          self.model.encode_flops(length) +
          num * beams * self.model.decode_steps_flops(length, steps))
      for i in range(len(chunk)):
        samples = []
        self.compute.sample_tokens += len(chunk[i])
        for j in range(num):
          row = i * num + j
          n = int(result.lengths[row])
          self.compute.sample_tokens += n
          ids = result.tokens[row, :n]
          finished = n < max_length or (n == max_length and ids[-1] == self.codec.eos_id)
          samples.append(Generation(
              text=self.codec.decode(ids), logprob=float(result.token_logprobs[row].sum()),
              num_tokens=n, finished=bool(finished)))
        out.append(samples)
    return out

  # --------------------------------------------------------------- scoring

  def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]
                    ) -> list[list[dict[str, Any]]]:
    """Log-likelihood of each of a prompt's options as its continuation (no EOS;
    rank classification), `[prompt][option]` dicts like `score`'s. Each prompt
    is read once for all its options (`BaseModel.continuation_logps`: a
    decoder-only student prefills it into a KV cache once), so ranking k options
    costs about one prompt and k short continuations, not k prompts."""
    if len(prompts) != len(options):
      raise errors.UserError(f"{len(prompts)} prompts but {len(options)} option lists")
    rows = [[self.codec.encode(t) for t in opts] for opts in options]
    for opts, ids in zip(options, rows):
      empty = [t for t, r in zip(opts, ids) if not r]
      if empty or not opts:
        raise errors.UserError(f"score_options: option {empty[0] if empty else opts!r} "
                               "has no tokens")
    fn = self._continuations_fn()
    input_rows = self._encode_inputs(prompts)
    width = max(len(r) for r in rows)  # options a prompt, padded to the most
    per_call = self._inputs_per_call(width)
    out: list[list[dict[str, Any]]] = []
    for start, chunk, length in self._chunks(input_rows, per_call):
      ochunk = rows[start:start + len(chunk)]
      longest = max(len(t) for r in ochunk for t in r)
      tlength = next(b for b in _buckets(max(self.max_decode_length, longest), 4)
                     if b >= longest)
      targets = np.zeros((per_call, width, tlength), np.int32)
      for i, r in enumerate(ochunk):
        for j, ids in enumerate(r):
          targets[i, j, :len(ids)] = ids
      token_logp = jax.device_get(fn(self.params, self._shard(self._pad(chunk, length,
                                                                       per_call)),
                                     self._shard(targets)))
      # Every row of the call: each prompt read once by a decoder-only student (a
      # family without its own `continuation_logps` reads it once per option),
      # then every option slot.
      reads = 1 if self.model.family == "decoder_only" else width
      self.compute.sample_flops += per_call * (
          reads * self.model.encode_flops(length) +
          width * self.model.decode_steps_flops(length, tlength))
      for i, r in enumerate(ochunk):
        self.compute.sample_tokens += len(chunk[i]) + sum(len(ids) for ids in r)
        scored = []
        for j, ids in enumerate(r):
          values = token_logp[i, j, :len(ids)]
          scored.append({"logprob": float(values.sum()), "num_tokens": len(ids),
                         "token_logprobs": [float(v) for v in values]})
        out.append(scored)
    return out

  def _continuations_fn(self):
    if "continuations" not in self._fns:
      model = self.model

      def fn(params, inputs, continuations):
        return model.continuation_logps(params, inputs, continuations)
      self._fns["continuations"] = self.partitioner.partition(fn)
    return self._fns["continuations"]

  def _score_fn(self):
    if "score" not in self._fns:
      model = self.model

      def fn(params, inputs, targets):
        return model.token_logps(params, inputs, targets)[0]
      self._fns["score"] = self.partitioner.partition(fn)
    return self._fns["score"]

  def score(self, inputs: Sequence[str], targets: Sequence[str],
            eos: bool = True) -> list[dict[str, Any]]:
    """Log-likelihood of each target given its input, its EOS included with
    `eos` (a whole answer) or not (a continuation, as rank classification
    scores an option's text)."""
    if len(inputs) != len(targets):
      raise errors.UserError(f"{len(inputs)} inputs but {len(targets)} targets")
    fn = self._score_fn()
    input_rows = self._encode_inputs(inputs)
    target_rows = [self.codec.encode(t) + ([self.codec.eos_id] if eos else [])
                   for t in targets]
    empty = [t for t, ids in zip(targets, target_rows) if not ids]
    if empty:
      raise errors.UserError(f"score: target {empty[0]!r} has no tokens")
    out = []
    for start, chunk, length in self._chunks(input_rows, self.batch_size):
      tchunk = target_rows[start:start + len(chunk)]
      longest = max(len(t) for t in tchunk)
      tlength = next(b for b in _buckets(max(self.max_decode_length, longest))
                     if b >= longest)
      token_logp = jax.device_get(fn(self.params, self._shard(self._pad(chunk, length)),
                                     self._shard(self._pad(tchunk, tlength))))
      # Every row of the call, as the padded batch computes them.
      self.compute.sample_flops += self.model.forward_flops(self.batch_size, length, tlength)
      for i, ids in enumerate(tchunk):
        self.compute.sample_tokens += len(chunk[i]) + len(ids)
        values = token_logp[i, :len(ids)]
        out.append({"logprob": float(values.sum()), "num_tokens": len(ids),
                    "token_logprobs": [float(v) for v in values]})
    return out
