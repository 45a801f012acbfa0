"""Prompt -> completion for decoder-only students (Llama family, GPT-2).

The project's batches are prompt/completion pairs: `inputs` (the prompt,
0-padded on the right) and `targets` (the completion, EOS-terminated and
0-padded). A decoder-only model reads them as one sequence per row: the
prompt's real tokens moved to the right end of its block (padding on the left),
then the completion. Attention skips the padding, positions count real tokens
only, and the logits at the prompt's last token and at each completion token
but the last predict the completion. The loss and the log-probabilities cover
completion tokens only (what Fine-tune-CoT's code does for GPT-2 and what DPO
needs from prompt + response).

`decode` continues prompts of different lengths in one batch over a KV cache
(greedy or sampled, several samples per prompt), with the T5 sampler's token
choice and keys (`decoding.sample_token`).

`DecoderOnlyModel` puts these behind the model interface, over the same
prompt/completion features as T5's, so the trainer, DPO, the sampler, the
pipeline and export take it as they take T5 (`models/llama/*.gin`); a
pretrained model's own tokenizer is the vocabulary through `hf_tokenizer`
(`map_vocabulary_rows` reorders the embedding rows). Dropout, remat and
`scan_layers` are the config's (`models.stacking`); beam search runs T5's
loop (`decoding.beam_search_loop`) over this cache; packed batches become one
decoder row of prompt, completion, prompt, completion ... (`packed_sequence`).
(Fine-tune-CoT's decoder-only text format is the student format
`finetune_cot_decoder`.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinythinker_jax import decoding, errors
from tinythinker_jax.models import gpt2, llama, stacking
from tinythinker_jax.models.base import BaseModel, DecodeResult
from tinythinker_jax.training import losses

Array = jax.Array


DecoderConfig = Any  # llama.LlamaConfig or gpt2.GPT2Config


def module(config: DecoderConfig, decode: bool = False) -> nn.Module:
  """The Flax module of a decoder-only config (Llama family or GPT-2)."""
  if isinstance(config, gpt2.GPT2Config):
    return gpt2.GPT2Module(config, decode=decode)
  return llama.LlamaModule(config, decode=decode)


def prompt_completion_sequence(inputs: Array, targets: Array, prefix: Sequence[int] = (),
                               suffix: Sequence[int] = (), eos_id: int = 1
                               ) -> tuple[Array, Array, Array]:
  """(tokens, attention mask, positions) `[batch, W + T]` of prompts `inputs [batch, I]`
  and completions `targets [batch, T]`, both 0-padded on the right; the prompt
  block is `W = I + len(prefix) + len(suffix)` wide.

  A chat template's `prefix`/`suffix` ids wrap each prompt in place of its
  EOS: prefix, (padding), the prompt's tokens, suffix. Padding in between is
  masked and positions count real tokens only, so this is the template's own
  sequence.
  """
  width = inputs.shape[1]
  lengths = jnp.sum(inputs > 0, axis=1)
  if prefix or suffix:  # The template closes the prompt: its EOS goes.
    last = jnp.take_along_axis(inputs, jnp.maximum(lengths - 1, 0)[:, None], 1)[:, 0]
    lengths = jnp.where((lengths > 0) & (last == eos_id), lengths - 1, lengths)
  source = jnp.arange(width)[None, :] - (width - lengths)[:, None]
  prompt = jnp.where(source >= 0, jnp.take_along_axis(inputs, jnp.maximum(source, 0), 1), 0)
  rows = inputs.shape[0]
  pieces = [jnp.broadcast_to(jnp.asarray(prefix, inputs.dtype), (rows, len(prefix))),
            prompt,
            jnp.broadcast_to(jnp.asarray(suffix, inputs.dtype), (rows, len(suffix))),
            targets]
  masks = [jnp.ones((rows, len(prefix)), bool), source >= 0,
           jnp.ones((rows, len(suffix)), bool), targets > 0]
  tokens = jnp.concatenate(pieces, axis=1)
  mask = jnp.concatenate(masks, axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def _wrap(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
  return {"prefix": tuple(config.prompt_prefix_ids), "suffix": tuple(config.prompt_suffix_ids)}


def _template_width(config: DecoderConfig) -> int:
  return len(config.prompt_prefix_ids) + len(config.prompt_suffix_ids)


def packed_sequence(inputs: Array, targets: Array, input_segment_ids: Array,
                    target_segment_ids: Array) -> tuple[Array, Array, Array, Array]:
  """Packed rows (seqio's: each row holds segments 1, 2, ... of prompts in
  `inputs` and of their completions in `targets`, 0 on padding) as one decoder
  row each: prompt 1, completion 1, prompt 2, completion 2, ... then padding.
  Returns (tokens, segment ids, positions within each segment) `[batch, I + T]`
  and, per target position, the index of the token that predicts it `[batch, T]`."""
  width, length = inputs.shape[1], targets.shape[1]
  total = width + length
  bins = max(width, length) + 1

  def per_row(seg_in, seg_out):
    prompt_len = jnp.bincount(seg_in, length=bins).at[0].set(0)
    completion_len = jnp.bincount(seg_out, length=bins).at[0].set(0)
    offset = jnp.cumsum(prompt_len + completion_len) - prompt_len - completion_len
    prompt_start = jnp.cumsum(prompt_len) - prompt_len
    completion_start = jnp.cumsum(completion_len) - completion_len
    j_in = jnp.arange(width) - prompt_start[seg_in]
    j_out = jnp.arange(length) - completion_start[seg_out]
    dest_in = jnp.where(seg_in > 0, offset[seg_in] + j_in, total)  # total: dropped.
    dest_out = jnp.where(seg_out > 0, offset[seg_out] + prompt_len[seg_out] + j_out, total)
    return dest_in, dest_out, j_in, prompt_len[seg_out] + j_out

  dest_in, dest_out, pos_in, pos_out = jax.vmap(per_row)(input_segment_ids,
                                                          target_segment_ids)
  rows = jnp.arange(inputs.shape[0])[:, None]

  def scatter(prompt_values, completion_values):
    out = jnp.zeros((inputs.shape[0], total), prompt_values.dtype)
    out = out.at[rows, dest_in].set(prompt_values, mode="drop")
    return out.at[rows, dest_out].set(completion_values, mode="drop")

  tokens = scatter(inputs, targets)
  segments = scatter(input_segment_ids, target_segment_ids)
  positions = scatter(pos_in, pos_out)
  predictor = jnp.where(target_segment_ids > 0, dest_out - 1, 0)
  return tokens, segments, positions, predictor


def completion_logps(config: DecoderConfig, params: Any, inputs: Array,
                     targets: Array, dropout_rng: Optional[Array] = None,
                     input_segment_ids: Optional[Array] = None,
                     target_segment_ids: Optional[Array] = None
                     ) -> tuple[Array, Array]:
  """(log p(targets[t] | prompt, targets[:t]) `[batch, T]`, the completion's
  logits `[batch, T, vocab]`), 0 at padding: the log-probability function of
  SFT and DPO alike. With `dropout_rng`, the config's dropout applies; with
  segment ids, the rows are packed (`packed_sequence`)."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  if (input_segment_ids is None) != (target_segment_ids is None):
    raise errors.UserError("packed decoder-only batches need both the prompts' and the "
                           "completions' segment ids")
  if input_segment_ids is not None:
    if _template_width(config):
      raise errors.UserError("a chat template (prompt_prefix_ids / prompt_suffix_ids) is not "
                             "built for packed batches: PACK = False")
    tokens, segments, positions, predictor = packed_sequence(
        inputs, targets, input_segment_ids, target_segment_ids)
    completion = module(config).apply(
        {"params": params}, tokens, positions=positions, segment_ids=segments,
        attention_mask=segments > 0, deterministic=dropout_rng is None, rngs=rngs,
        logits_at=predictor)
    return losses.token_logps(completion, targets), completion
  tokens, mask, positions = prompt_completion_sequence(inputs, targets, **_wrap(config))
  width, length = inputs.shape[1] + _template_width(config), targets.shape[1]
  # Position i predicts token i + 1: the output layer runs on the completion's
  # predictors only, not on the prompt, whose logits no loss reads.
  predictor = jnp.broadcast_to(width - 1 + jnp.arange(length), targets.shape)
  completion = module(config).apply(
      {"params": params}, tokens, positions=positions, attention_mask=mask,
      deterministic=dropout_rng is None, rngs=rngs, logits_at=predictor)
  return losses.token_logps(completion, targets), completion


class _Prefilled(NamedTuple):
  decoder: nn.Module
  cache: Any
  last_logits: Array  # [rows, vocab]: the first new token's.
  key_valid: Array  # [rows, width + max_length]: the prompt's real slots.
  next_position: Array  # [rows]
  width: int


def _prefill(config: DecoderConfig, params: Any, inputs: Array, max_length: int
             ) -> _Prefilled:
  """The prompts (right-aligned) through a KV cache of `width + max_length` slots."""
  rows = inputs.shape[0]
  tokens, mask, positions = prompt_completion_sequence(
      inputs, jnp.zeros((rows, 0), inputs.dtype), **_wrap(config))
  width = tokens.shape[1]
  total = width + max_length
  decoder = module(config, decode=True)
  shapes = jax.eval_shape(lambda: decoder.init(
      jax.random.key(0), jnp.zeros((rows, total), jnp.int32),
      mask=jnp.ones((rows, total, total), bool)))["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  key_valid = jnp.zeros((rows, total), bool).at[:, :width].set(mask)
  slots = jnp.arange(total)
  prefill_mask = key_valid[:, None, :] & (slots[None, None, :] <= jnp.arange(width)[None, :,
                                                                                    None])
  # Only the last prompt position's logits are needed (the first new token's).
  logits, variables = decoder.apply({"params": params, "cache": cache}, tokens,
                                    positions=positions, mask=prefill_mask,
                                    mutable=["cache"],
                                    logits_at=jnp.full((rows, 1), width - 1, jnp.int32))
  return _Prefilled(decoder, variables["cache"], logits[:, -1].astype(jnp.float32),
                    key_valid, positions[:, -1] + 1, width)


def _step(params: Any, p: _Prefilled, step: Array, token: Array, cache: Any
          ) -> tuple[Array, Any]:
  """Feeds `token [rows]` as new token `step`: (the next logits, the cache)."""
  slots = jnp.arange(p.key_valid.shape[1])
  valid = p.key_valid | ((slots >= p.width) & (slots <= p.width + step))[None]
  logits, variables = p.decoder.apply(
      {"params": params, "cache": cache}, token[:, None],
      positions=(p.next_position + step)[:, None], mask=valid[:, None, :],
      mutable=["cache"])
  return logits[:, 0].astype(jnp.float32), variables["cache"]


def continuation_logps(config: DecoderConfig, params: Any, inputs: Array,
                       continuations: Array) -> Array:
  """`log p(continuations[r, j, t] | inputs[r], continuations[r, j, :t])`
  `[rows, k, length]` for `k` 0-padded continuations of each prompt (say a
  question's options), the prompt read once: prefilled into a KV cache, the cache
  repeated for each continuation, then every continuation's tokens in one pass.
  The same numbers as `completion_logps` on the prompt repeated `k` times (no
  EOS added); padding positions are not masked (the caller knows the lengths)."""
  rows, k, length = continuations.shape
  p = _prefill(config, params, inputs, length)
  repeat = functools.partial(jnp.repeat, repeats=k, axis=0)
  # Each prompt's cache rows, once per continuation (a scanned stack's cache has
  # its layers first; the write index is not per row).
  cache = decoding.select_cache_rows(p.cache, jnp.repeat(jnp.arange(rows), k))
  tokens = continuations.reshape(rows * k, length)
  slots = jnp.arange(p.key_valid.shape[1])
  steps = jnp.arange(length)
  own = (slots[None, :] >= p.width) & (slots[None, :] <= p.width + steps[:, None])
  mask = repeat(p.key_valid)[:, None, :] | own[None]
  logits, _ = p.decoder.apply(
      {"params": params, "cache": cache}, tokens,
      positions=repeat(p.next_position)[:, None] + steps[None], mask=mask,
      mutable=["cache"])
  # Token t is predicted by the prompt's last position (t = 0) or by token t - 1.
  predictors = jnp.concatenate([repeat(p.last_logits)[:, None],
                                logits[:, :-1].astype(jnp.float32)], axis=1)
  logps = jax.nn.log_softmax(predictors, axis=-1)
  picked = jnp.take_along_axis(logps, tokens[..., None], axis=-1)[..., 0]
  return picked.reshape(rows, k, length)


def _decode_loop(config: DecoderConfig, params: Any, inputs: Array, max_length: int,
                 eos_id: int, choose: Callable[..., Array]) -> DecodeResult:
  """The prompts through the cache at once, then one token per step;
  `choose(step, logits, rows)` picks it for the original rows `rows`.
  Log-probabilities are the model's own (temperature 1); tokens after EOS are 0.
  Finished rows are set aside as the batch shrinks (`decoding.shrink_levels`):
  each row's tokens are the ones it would get in the full batch."""
  p = _prefill(config, params, inputs, max_length)

  def body(state):
    step, out, logprobs, done, lengths, ids, (last_logits, cache, key_valid, position) = state
    token = choose(step, last_logits, ids)
    out, logprobs, done, lengths = decoding.record_token(
        step, token, last_logits, out, logprobs, done, lengths, eos_id)
    level = p._replace(key_valid=key_valid, next_position=position)
    logits, cache = _step(params, level, step, out[:, step], cache)  # 0 for rows done.
    return step + 1, out, logprobs, done, lengths, ids, (logits, cache, key_valid, position)

  return decoding.decode_in_levels(
      body, (p.last_logits, p.cache, p.key_valid, p.next_position), inputs.shape[0],
      max_length)


def beam_search(config: DecoderConfig, params: Any, inputs: Array, *, beam_size: int,
                max_length: int, eos_id: int) -> decoding.BeamResult:
  """Beam search (`decoding.beam_search_loop`) over the prompts' KV cache."""
  batch = inputs.shape[0]
  p = _prefill(config, params, jnp.repeat(inputs, beam_size, axis=0), max_length)
  return decoding.beam_search_loop(
      p.cache, lambda i, token, cache: _step(params, p, i - 1, token, cache),
      batch=batch, beam_size=beam_size, max_length=max_length, eos_id=eos_id,
      first_logits=p.last_logits)


def decode(config: DecoderConfig, params: Any, inputs: Array, *, max_length: int,
           eos_id: int, rng: Optional[Array] = None, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
           vocab_rows: Optional[int] = None) -> DecodeResult:
  """Continuations of 0-padded prompts `inputs [batch, I]`: greedy
  (`temperature=0`) or `num_samples` samples per prompt (rows
  `i * num_samples + j`; `rng` one key per prompt, or one key folded per
  prompt), drawn as `decoding.sample_decode` draws them."""
  if temperature == 0:
    return _decode_loop(config, params, inputs, max_length, eos_id, decoding.greedy_choice)
  choose = decoding.sample_chooser(rng, inputs.shape[0], num_samples,
                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                   vocab_rows=vocab_rows)
  return _decode_loop(config, params, jnp.repeat(inputs, num_samples, axis=0), max_length,
                      eos_id, choose)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyModel(BaseModel):
  """A decoder-only student (Llama family or GPT-2) over prompt -> completion
  batches (the same features as T5's: `encoder_input_tokens` is the prompt,
  `decoder_target_tokens` the completion); see the module docstring."""

  config: DecoderConfig
  family: ClassVar[str] = "decoder_only"

  def to_json(self) -> dict[str, Any]:
    return {"family": self.family, "config": dict(dataclasses.asdict(self.config),
                                                  architecture=self.architecture)}

  @property
  def architecture(self) -> str:
    return "gpt2" if isinstance(self.config, gpt2.GPT2Config) else "llama"

  @classmethod
  def from_config_json(cls, fields: Mapping[str, Any]) -> "DecoderOnlyModel":
    kind = gpt2.GPT2Config if fields.get("architecture") == "gpt2" else llama.LlamaConfig
    known = {f.name for f in dataclasses.fields(kind)}
    return cls(kind(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in fields.items() if k in known}))

  def _stacks(self) -> list:
    return [("", self.config.num_layers, f"{type(self.config).__name__}.num_layers")]

  def convert_params(self, params: Any) -> Any:
    return stacking.convert_layout(params, self._stacks(), self.config.scan_layers)

  def init_params(self, rng: Array) -> Any:
    tokens = jnp.ones((1, 2), jnp.int32)
    return module(self.config).init(rng, tokens)["params"]

  def logits(self, params: Any, batch: Mapping[str, Array], *,
             dropout_rng: Optional[Array] = None) -> Array:
    return completion_logps(self.config, params, batch["encoder_input_tokens"],
                            batch["decoder_target_tokens"], dropout_rng,
                            batch.get("encoder_segment_ids"),
                            batch.get("decoder_segment_ids"))[1]

  def token_logps(self, params: Any, inputs: Array, targets: Array, *,
                  dropout_rng: Optional[Array] = None,
                  input_segment_ids: Optional[Array] = None,
                  target_segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
    return completion_logps(self.config, params, inputs, targets, dropout_rng,
                            input_segment_ids, target_segment_ids)

  def decode(self, params: Any, inputs: Array, *, max_length: int, eos_id: int = 1,
             rng: Optional[Array] = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, num_samples: int = 1, num_beams: int = 1,
             vocab_rows: Optional[int] = None) -> DecodeResult:
    if temperature == 0 and num_beams > 1:
      beams = beam_search(self.config, params, inputs, beam_size=num_beams,
                          max_length=max_length, eos_id=eos_id)
      best = beams.tokens[:, 0]
      return DecodeResult(best, jnp.zeros(best.shape, jnp.float32).at[:, 0].set(
          beams.scores[:, 0]), beams.lengths[:, 0])
    return decode(self.config, params, inputs, max_length=max_length, eos_id=eos_id,
                  rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                  num_samples=num_samples, vocab_rows=vocab_rows)

  def continuation_logps(self, params: Any, inputs: Array, continuations: Array) -> Array:
    return continuation_logps(self.config, params, inputs, continuations)

  # FLOPs: the standard count (models.flops) for one decoder over prompt + completion.
  def _weights(self) -> int:
    c = self.config
    if isinstance(c, gpt2.GPT2Config):
      return c.num_layers * (4 * c.emb_dim * c.emb_dim + 2 * c.emb_dim * c.inner_dim) + \
          c.emb_dim * c.vocab_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return c.num_layers * (2 * c.emb_dim * q + 2 * c.emb_dim * kv + 3 * c.emb_dim *
                           c.mlp_dim) + c.emb_dim * c.vocab_size

  def _attention(self, queries: int, keys: int) -> int:
    return 4 * self.config.num_heads * self.config.head_dim * self.config.num_layers * \
        queries * keys

  def forward_flops(self, batch: int, input_length: int, target_length: int) -> int:
    length = input_length + _template_width(self.config) + target_length
    return batch * (2 * self._weights() * length + self._attention(length, length))

  def train_step_flops(self, shapes: Mapping[str, Sequence[int]]) -> Optional[int]:
    if "encoder_input_tokens" not in shapes:
      return None
    batch, input_length = shapes["encoder_input_tokens"][:2]
    keys = [k for k in ("decoder_target_tokens", "chosen_target_tokens",
                        "rejected_target_tokens") if k in shapes]
    if not keys or (keys[0] != "decoder_target_tokens" and len(keys) != 2):
      return None
    return sum(3 * self.forward_flops(batch, input_length, shapes[k][1])
               for k in keys[:1 if keys[0] == "decoder_target_tokens" else 2])

  def encode_flops(self, input_length: int) -> int:
    input_length += _template_width(self.config)
    return 2 * self._weights() * input_length + self._attention(input_length, input_length)

  def decode_steps_flops(self, input_length: int, new_tokens: int) -> int:
    input_length += _template_width(self.config)
    n = int(new_tokens)
    attended = n * input_length + n * (n + 1) // 2
    return 2 * self._weights() * n + self._attention(1, 1) * attended

  @classmethod
  def load_hf(cls, path: str, **options) -> tuple["DecoderOnlyModel", Any]:
    # pylint: disable=import-outside-toplevel
    import json as json_lib
    from tinythinker_jax import paths
    from tinythinker_jax.convert import hf_gpt2, hf_llama
    config_path = paths.as_path(path) / "config.json"
    if config_path.exists() and json_lib.loads(config_path.read_text()).get(
        "model_type") == "gpt2":
      config, params = hf_gpt2.load_hf_gpt2(path)
      return cls(config), params
    config, params = hf_llama.load_hf_llama(path)
    return cls(config), params

  reads_gguf = True

  @classmethod
  def hf_vocabulary(cls, folder: str) -> str:
    """Its `tokenizer.json`; a student trained here from scratch and exported
    carries the project's SentencePiece model (`spiece.model`) instead."""
    from tinythinker_jax import paths  # pylint: disable=import-outside-toplevel
    for name in ("spiece.model", "tokenizer.json"):
      if (paths.as_path(folder) / name).exists():
        return str(paths.as_path(folder) / name)
    return ""

  @classmethod
  def load_gguf(cls, path: str) -> tuple["DecoderOnlyModel", Any]:
    """(model, host parameters) of a Llama-family GGUF file."""
    from tinythinker_jax.convert import gguf_llama  # pylint: disable=import-outside-toplevel
    config, params = gguf_llama.load_gguf_llama(path)
    return cls(config), params

  def map_vocabulary_rows(self, params: Any, fn: Callable[[Any], Any]
                          ) -> tuple["DecoderOnlyModel", Any]:
    import numpy as np  # pylint: disable=import-outside-toplevel
    params = dict(nn.unbox(params))
    params["embedding"] = fn(np.asarray(params["embedding"]))
    if "lm_head" in params:  # [emb, vocab]
      params["lm_head"] = np.ascontiguousarray(fn(np.asarray(params["lm_head"]).T).T)
    config = dataclasses.replace(self.config, vocab_size=params["embedding"].shape[0])
    return type(self)(config), params

  def save_hf(self, params: Any, path: str, *, dtype: Optional[str] = None) -> None:
    if dtype not in (None, "float32"):
      raise errors.UserError(f"export dtype={dtype!r}: decoder-only students export in "
                             "float32 only so far")
    # pylint: disable=import-outside-toplevel
    from tinythinker_jax.convert import hf_gpt2, hf_llama
    params = nn.unbox(params)
    if self.config.scan_layers:  # HF folders hold one tensor per layer.
      params = stacking.unstack_layers(params, self._stacks())
    if isinstance(self.config, gpt2.GPT2Config):
      hf_gpt2.save_hf_gpt2(self.config, params, path)
    else:
      hf_llama.save_hf_llama(self.config, params, path)
