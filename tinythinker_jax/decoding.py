"""Pure, jittable decoding over the T5 KV cache.

`greedy_decode` is a function of (params, inputs, settings) that returns
sequences and their log-probabilities; it runs the encoder once, fills the
cross-attention cache once, and then feeds one token per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tinythinker_jax.models.t5 import T5

Array = jax.Array


class DecodeResult(NamedTuple):
  tokens: Array  # [batch, max_length]; 0 after the first EOS.
  token_logprobs: Array  # [batch, max_length]; 0 where tokens are 0.
  lengths: Array  # [batch]: tokens up to and including EOS (max_length if none).


def init_cache(model: T5, params: Any, encoded: Array, encoder_input_tokens: Array,
               max_length: int) -> Any:
  """A decode cache for `max_length` steps, with the cross-attention K/V filled."""
  batch = encoder_input_tokens.shape[0]
  _, variables = model.apply({"params": params}, encoded, encoder_input_tokens,
                             jnp.zeros((batch, max_length), jnp.int32), decode=True,
                             mutable=["cache"], method=T5.decode)
  return variables["cache"]


def greedy_decode(model: T5, params: Any, encoder_input_tokens: Array, *,
                  max_length: int, eos_id: int = 1) -> DecodeResult:
  """Greedy decoding with a KV cache; stops early once every row hit EOS."""
  batch = encoder_input_tokens.shape[0]
  encoded = model.apply({"params": params}, encoder_input_tokens, method=T5.encode)
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_length)

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < max_length) & ~jnp.all(done)

  def body(state):
    step, tokens, logprobs, done, lengths, cache = state
    previous = jnp.where(step == 0, 0, tokens[:, jnp.maximum(step - 1, 0)])
    logits, variables = model.apply({"params": params, "cache": cache}, encoded,
                                    encoder_input_tokens, previous[:, None], decode=True,
                                    mutable=["cache"], method=T5.decode)
    log_softmax = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)
    token = jnp.argmax(log_softmax, axis=-1).astype(jnp.int32)
    token_logprob = jnp.take_along_axis(log_softmax, token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, 0, token)
    token_logprob = jnp.where(done, 0.0, token_logprob)
    tokens = tokens.at[:, step].set(token)
    logprobs = logprobs.at[:, step].set(token_logprob)
    lengths = jnp.where(~done & (token == eos_id), step + 1, lengths)
    done = done | (token == eos_id)
    return step + 1, tokens, logprobs, done, lengths, variables["cache"]

  state = (jnp.zeros((), jnp.int32), jnp.zeros((batch, max_length), jnp.int32),
           jnp.zeros((batch, max_length), jnp.float32), jnp.zeros((batch,), bool),
           jnp.full((batch,), max_length, jnp.int32), cache)
  _, tokens, logprobs, _, lengths, _ = jax.lax.while_loop(cond, body, state)
  return DecodeResult(tokens, logprobs, lengths)
