"""Prompt -> completion for decoder-only students (issue #25 groundwork).

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

Not yet behind the model interface (no packing, FLOPs, export, gin or pipeline).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from tinythinker_jax import decoding
from tinythinker_jax.models import llama
from tinythinker_jax.models.base import DecodeResult
from tinythinker_jax.training import losses

Array = jax.Array


def prompt_completion_sequence(inputs: Array, targets: Array) -> tuple[Array, Array, Array]:
  """(tokens, attention mask, positions) `[batch, I + T]` of prompts `inputs [batch, I]`
  and completions `targets [batch, T]`, both 0-padded on the right."""
  width = inputs.shape[1]
  lengths = jnp.sum(inputs > 0, axis=1)
  source = jnp.arange(width)[None, :] - (width - lengths)[:, None]
  prompt = jnp.where(source >= 0, jnp.take_along_axis(inputs, jnp.maximum(source, 0), 1), 0)
  tokens = jnp.concatenate([prompt, targets], axis=1)
  mask = jnp.concatenate([source >= 0, targets > 0], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def completion_logps(config: llama.LlamaConfig, params: Any, inputs: Array,
                     targets: Array) -> tuple[Array, Array]:
  """(log p(targets[t] | prompt, targets[:t]) `[batch, T]`, the completion's
  logits `[batch, T, vocab]`), 0 at padding: the log-probability function of
  SFT and DPO alike."""
  tokens, mask, positions = prompt_completion_sequence(inputs, targets)
  logits = llama.LlamaModule(config).apply({"params": params}, tokens, positions=positions,
                                           attention_mask=mask)
  width, length = inputs.shape[1], targets.shape[1]
  completion = logits[:, width - 1:width - 1 + length]  # Position i predicts token i + 1.
  return losses.token_logps(completion, targets), completion


def _decode_loop(config: llama.LlamaConfig, params: Any, inputs: Array, max_length: int,
                 eos_id: int, choose: Callable[[Array, Array], Array]) -> DecodeResult:
  """The prompts through the cache at once, then one token per step;
  `choose(step, logits)` picks it. Log-probabilities are the model's own
  (temperature 1); tokens after EOS are 0."""
  rows, width = inputs.shape
  total = width + max_length
  tokens, mask, positions = prompt_completion_sequence(
      inputs, jnp.zeros((rows, 0), inputs.dtype))
  module = llama.LlamaModule(config, decode=True)
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((rows, total), jnp.int32),
      mask=jnp.ones((rows, total, total), bool)))["cache"]
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  key_valid = jnp.zeros((rows, total), bool).at[:, :width].set(mask)
  slots = jnp.arange(total)
  prefill_mask = key_valid[:, None, :] & (slots[None, None, :] <= jnp.arange(width)[None, :,
                                                                                    None])
  logits, variables = module.apply({"params": params, "cache": cache}, tokens,
                                   positions=positions, mask=prefill_mask,
                                   mutable=["cache"])
  next_position = positions[:, -1] + 1

  def cond(state):
    step, _, _, done, _, _, _, _, _ = state
    return (step < max_length) & ~jnp.all(done)

  def body(state):
    step, out, logprobs, done, lengths, last_logits, cache, valid, position = state
    token = choose(step, last_logits)
    token_logprob = jnp.take_along_axis(jax.nn.log_softmax(last_logits, axis=-1),
                                        token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, 0, token)
    out = out.at[:, step].set(token)
    logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, token_logprob))
    lengths = jnp.where(~done & (token == eos_id), step + 1, lengths)
    done = done | (token == eos_id)
    valid = valid.at[:, width + step].set(True)
    step_mask = valid[:, None, :] & (slots[None, None, :] <= width + step)
    logits, variables = module.apply({"params": params, "cache": cache}, token[:, None],
                                     positions=position[:, None], mask=step_mask,
                                     mutable=["cache"])
    return (step + 1, out, logprobs, done, lengths, logits[:, 0].astype(jnp.float32),
            variables["cache"], valid, position + 1)

  state = (jnp.zeros((), jnp.int32), jnp.zeros((rows, max_length), jnp.int32),
           jnp.zeros((rows, max_length), jnp.float32), jnp.zeros((rows,), bool),
           jnp.full((rows,), max_length, jnp.int32), logits[:, -1].astype(jnp.float32),
           variables["cache"], key_valid, next_position)
  _, out, logprobs, _, lengths, _, _, _, _ = jax.lax.while_loop(cond, body, state)
  return DecodeResult(out, logprobs, lengths)


def decode(config: llama.LlamaConfig, params: Any, inputs: Array, *, max_length: int,
           eos_id: int, rng: Optional[Array] = None, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, num_samples: int = 1) -> DecodeResult:
  """Continuations of 0-padded prompts `inputs [batch, I]`: greedy
  (`temperature=0`) or `num_samples` samples per prompt (rows
  `i * num_samples + j`; `rng` one key per prompt, or one key folded per
  prompt), drawn as `decoding.sample_decode` draws them."""
  if temperature == 0:
    return _decode_loop(config, params, inputs, max_length, eos_id,
                        lambda step, logits: jnp.argmax(logits, -1).astype(jnp.int32))
  batch = inputs.shape[0]
  if rng.shape != (batch,):
    rng = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
  sample_keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(
      jnp.arange(num_samples)))(rng).reshape(batch * num_samples)

  def choose(step, logits):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(sample_keys)
    return decoding.sample_token(step_keys, logits, temperature=temperature, top_k=top_k,
                                 top_p=top_p)
  return _decode_loop(config, params, jnp.repeat(inputs, num_samples, axis=0), max_length,
                      eos_id, choose)
