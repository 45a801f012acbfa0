"""Pure, jittable decoding over the T5 KV cache.

`greedy_decode` is a function of (params, inputs, settings) that returns
sequences and their log-probabilities; it runs the encoder once, fills the
cross-attention cache once, and then feeds one token per step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from tinythinker_jax.models import base
from tinythinker_jax.models.t5 import T5

Array = jax.Array


DecodeResult = base.DecodeResult  # tokens, token log-probs, lengths


def init_cache(model: T5, params: Any, encoded: Array, encoder_input_tokens: Array,
               max_length: int) -> Any:
  """A decode cache for `max_length` steps, with the cross-attention K/V filled."""
  batch = encoder_input_tokens.shape[0]
  _, variables = model.apply({"params": params}, encoded, encoder_input_tokens,
                             jnp.zeros((batch, max_length), jnp.int32), decode=True,
                             mutable=["cache"], method=T5.decode)
  return variables["cache"]


def record_token(step: Array, token: Array, logits: Array, tokens: Array,
                 logprobs: Array, done: Array, lengths: Array, eos_id: int
                 ) -> tuple[Array, Array, Array, Array]:
  """One decoding step's bookkeeping, shared by every family's loop: `token`
  (chosen from `logits`) and its own log-probability (temperature 1) written at
  `step`, 0 for rows already done; lengths and done updated at EOS."""
  token_logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                      token[:, None], axis=-1)[:, 0]
  token = jnp.where(done, 0, token)
  tokens = tokens.at[:, step].set(token)
  logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, token_logprob))
  lengths = jnp.where(~done & (token == eos_id), step + 1, lengths)
  return tokens, logprobs, done | (token == eos_id), lengths


# A decode loop keeps stepping every row until its last row ends, and a finished
# row costs as much per step as a live one. So the loops run in levels: once no
# more than a quarter of a level's rows are unfinished, those rows (and their
# caches) move into a batch a quarter the size, down to `MIN_ROWS`. Each level is
# its own while-loop at a static shape, so nothing recompiles per batch.
SHRINK = 4
MIN_ROWS = 2


def shrink_levels(rows: int) -> list[int]:
  """The batch sizes a decode loop of `rows` rows runs through."""
  sizes = [rows]
  while sizes[-1] // SHRINK >= MIN_ROWS:
    sizes.append(sizes[-1] // SHRINK)
  return sizes


def decode_in_levels(body: Callable[[tuple], tuple], carry: Any, rows: int,
                     max_length: int) -> DecodeResult:
  """Runs a decode loop's `body` over `(step, tokens, logprobs, done, lengths,
  ids, carry)` in the levels of `shrink_levels(rows)`: each level while steps
  remain and more of its rows are unfinished than the next level holds (any, at
  the last); then its unfinished rows, their `carry` (per-row arrays and caches,
  selected by `select_cache_rows`) and their original row ids `ids` move on.
  Returns every row's tokens, log-probabilities and lengths in the original order."""
  sizes = shrink_levels(rows)
  full = (jnp.zeros((rows, max_length), jnp.int32),
          jnp.zeros((rows, max_length), jnp.float32), jnp.zeros((rows,), bool),
          jnp.full((rows,), max_length, jnp.int32))
  state = (jnp.zeros((), jnp.int32), *full, jnp.arange(rows), carry)
  for i in range(len(sizes)):
    threshold = sizes[i + 1] if i + 1 < len(sizes) else 0

    def cond(state, threshold=threshold):
      step, done = state[0], state[3]
      return (step < max_length) & (jnp.sum(~done) > threshold)
    state = jax.lax.while_loop(cond, body, state)
    step, tokens, logprobs, done, lengths, ids, carry = state
    full = tuple(f.at[ids].set(x) for f, x in zip(full, (tokens, logprobs, done, lengths)))
    if threshold:
      keep = jnp.argsort(done, stable=True)[:threshold]  # unfinished rows first
      state = (step, tokens[keep], logprobs[keep], done[keep], lengths[keep], ids[keep],
               select_cache_rows(carry, keep))
  tokens, logprobs, _, lengths = full
  return DecodeResult(tokens, logprobs, lengths)


def _decode_loop(model: T5, params: Any, encoder_input_tokens: Array, max_length: int,
                 eos_id: int, choose: Callable[..., Array],
                 repeats: int = 1) -> DecodeResult:
  """Feeds one token per step through the cache; `choose(step, logits, rows)`
  picks it for the original rows `rows`.

  Log-probabilities are the model's own (temperature 1, unfiltered). Stops
  early once every row has produced EOS; tokens after EOS are 0; finished rows
  are set aside as the batch shrinks (`shrink_levels`), each row's tokens the
  ones it would get in the full batch. With `repeats > 1` every input is
  encoded once and decoded `repeats` times (rows i * repeats ... of the result).
  """
  encoded = model.apply({"params": params}, encoder_input_tokens, method=T5.encode)
  if repeats > 1:
    encoded = jnp.repeat(encoded, repeats, axis=0)
    encoder_input_tokens = jnp.repeat(encoder_input_tokens, repeats, axis=0)
  batch = encoder_input_tokens.shape[0]
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_length)

  def body(state):
    step, tokens, logprobs, done, lengths, ids, (cache, encoded, inputs) = state
    previous = jnp.where(step == 0, 0, tokens[:, jnp.maximum(step - 1, 0)])
    logits, variables = model.apply({"params": params, "cache": cache}, encoded,
                                    inputs, previous[:, None], decode=True,
                                    mutable=["cache"], method=T5.decode)
    logits = logits[:, 0].astype(jnp.float32)
    token = choose(step, logits, ids)
    tokens, logprobs, done, lengths = record_token(step, token, logits, tokens, logprobs,
                                                   done, lengths, eos_id)
    return (step + 1, tokens, logprobs, done, lengths, ids,
            (variables["cache"], encoded, inputs))

  return decode_in_levels(body, (cache, encoded, encoder_input_tokens), batch, max_length)


def greedy_choice(step: Array, logits: Array, rows: Array) -> Array:
  """A decode loop's `choose` for greedy decoding: the most likely token."""
  del step, rows
  return jnp.argmax(logits, -1).astype(jnp.int32)


def greedy_decode(model: T5, params: Any, encoder_input_tokens: Array, *,
                  max_length: int, eos_id: int = 1) -> DecodeResult:
  """Greedy decoding with a KV cache; stops early once every row hit EOS."""
  return _decode_loop(model, params, encoder_input_tokens, max_length, eos_id,
                      greedy_choice)


# ------------------------------------------------------------------- sampling


def filter_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
  """Temperature-scaled logits with every token outside top-k / top-p set to -inf.

  Top-k keeps the k largest logits (ties at the k-th value are kept); top-p
  keeps the smallest prefix of tokens, by decreasing probability, whose mass
  reaches `top_p` (the most likely token is always kept).
  """
  logits = logits.astype(jnp.float32) / max(temperature, 1e-6)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def sample_token(rng: Array, logits: Array, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> Array:
  """One token per row; temperature 0 is greedy."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return categorical(rng, filtered)


def categorical(rng: Array, logits: Array) -> Array:
  """An exact draw from softmax(logits) per row by inverting its CDF.

  One uniform number per row instead of `jax.random.categorical`'s one Gumbel
  number per vocabulary entry, which dominates a sampling step's time on CPU
  for 32k-token vocabularies. Tokens of probability 0 (-inf logits) are never
  drawn: a flat stretch of the CDF cannot hold a strict crossing. `rng` is one
  key, or one key per row (shape `logits.shape[:-1]`), which makes each row's
  draw independent of the rows it is batched with.
  """
  cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  if rng.shape and rng.shape == logits.shape[:-1]:
    u = jax.vmap(lambda k: jax.random.uniform(k, (1,), jnp.float32))(rng)
  else:
    u = jax.random.uniform(rng, logits.shape[:-1] + (1,), jnp.float32)
  # u = 0 exactly (one draw in 2^23) would pick a leading token of probability 0.
  u = jnp.maximum(u, jnp.finfo(jnp.float32).tiny) * cdf[..., -1:]
  index = jnp.sum(cdf < u, axis=-1)
  return jnp.minimum(index, logits.shape[-1] - 1).astype(jnp.int32)


def sample_decode(model: T5, params: Any, encoder_input_tokens: Array, rng: Array, *,
                  max_length: int, num_samples: int = 1, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, eos_id: int = 1,
                  vocab_rows: Optional[int] = None) -> DecodeResult:
  """`num_samples` sampled continuations per input, as rows `[batch * num_samples]`
  (the samples of input i are rows i * num_samples ...). Log-probabilities are
  the model's own (temperature 1, unfiltered), as DPO needs them.

  `rng` is one key per input (shape `[batch]`), or one key from which input
  i's is `fold_in(rng, i)`. Sample j of input i at step t draws with
  `fold_in(fold_in(key_i, j), t)`, so what an input gets depends only on its
  key: not on the batch size, its row, or how rows are spread over devices.
  """
  choose = sample_chooser(rng, encoder_input_tokens.shape[0], num_samples,
                          temperature=temperature, top_k=top_k, top_p=top_p,
                          vocab_rows=vocab_rows)
  return _decode_loop(model, params, encoder_input_tokens, max_length, eos_id, choose,
                      repeats=num_samples)


def real_token_logits(logits: Array, vocab_rows: Optional[int]) -> Array:
  """`logits` with padding (id 0) and the table's rows beyond a tokenizer's
  `vocab_rows` ids at -inf: a sampler given them never draws a token the
  tokenizer lacks (an unchanged array when `vocab_rows` is None)."""
  if vocab_rows is None:
    return logits
  ids = jnp.arange(logits.shape[-1])
  return jnp.where((ids > 0) & (ids < vocab_rows), logits, -jnp.inf)


def sample_chooser(rng: Array, batch: int, num_samples: int, *, temperature: float,
                   top_k: int, top_p: float, vocab_rows: Optional[int] = None
                   ) -> Callable[[Array, Array], Array]:
  """`choose(step, logits[, rows])` for `batch * num_samples` rows (input i's
  samples are rows i * num_samples ...; `rows` names the rows `logits` holds
  when a loop has set finished rows aside): sample j of input i at step t draws with
  `fold_in(fold_in(key_i, j), t)`; `rng` is one key per input, or one key from
  which input i's is `fold_in(rng, i)`."""
  if rng.shape != (batch,):
    rng = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
  sample_keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(
      jnp.arange(num_samples)))(rng).reshape(batch * num_samples)

  def choose(step, logits, rows=None):
    # `rows`: which of the batch's rows `logits` holds (a compacted loop's).
    keys = sample_keys if rows is None else sample_keys[rows]
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    return sample_token(step_keys, real_token_logits(logits, vocab_rows),
                        temperature=temperature, top_k=top_k, top_p=top_p)
  return choose


# ---------------------------------------------------------------- beam search


class BeamResult(NamedTuple):
  tokens: Array  # [batch, beam, max_length], best beam first; 0 after EOS.
  scores: Array  # [batch, beam]: total log-probability (-inf for unfilled beams).
  lengths: Array  # [batch, beam]


_UNBATCHED_CACHE = ("position", "key_positions", "index")


def select_cache_rows(cache: Any, rows: Array) -> Any:
  """The batch rows `rows` of a cache, or of any pytree of caches and per-row
  arrays; a scanned stack's (under `layers`) have the layers first and the batch
  second. Positions and indices are not per row."""
  def select(path, x):
    keys = [getattr(k, "key", None) for k in path]
    if keys[-1] in _UNBATCHED_CACHE:
      return x
    return x[:, rows] if "layers" in keys else x[rows]
  return jax.tree_util.tree_map_with_path(select, cache)


StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]


def beam_search_loop(cache: Any, step: StepFn, *, batch: int, beam_size: int,
                     max_length: int, eos_id: int = 1,
                     first_logits: Optional[Array] = None) -> BeamResult:
  """Beam search over a KV cache, ranking by total log-probability, for any
  model: `step(i, tokens [batch * beam], cache)` feeds each beam's token i - 1
  (0 at i = 0, a decoder's start) and returns the logits for token i and the
  cache. A model that has already read its prompt (a decoder-only prefill)
  passes the logits for token 0 as `first_logits`; its steps then feed token i - 1.

  A beam that produced EOS continues only with padding at log-probability 0,
  so finished and unfinished hypotheses compete on their full scores.
  """
  k = beam_size
  neg_inf = jnp.float32(-jnp.inf)
  scores = jnp.full((batch, k), neg_inf).at[:, 0].set(0.0)  # One live beam at first.
  state = (jnp.zeros((batch, k, max_length), jnp.int32), scores,
           jnp.zeros((batch, k), bool), jnp.full((batch, k), max_length, jnp.int32), cache)

  def body(i, state):
    tokens, scores, done, lengths, cache = state
    previous = jnp.where(i == 0, 0, tokens[:, :, jnp.maximum(i - 1, 0)]).reshape(-1)
    if first_logits is None:
      logits, cache = step(i, previous, cache)
    else:
      logits, cache = jax.lax.cond(i == 0, lambda c: (first_logits, c),
                                   lambda c: step(i, previous, c), cache)
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    pad_only = jnp.where(jnp.arange(vocab) == 0, 0.0, neg_inf)
    logp = jnp.where(done[..., None], pad_only, logp)
    top_scores, top_index = jax.lax.top_k((scores[..., None] + logp).reshape(batch, -1), k)
    parent, token = top_index // vocab, top_index % vocab
    tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
    parent_done = jnp.take_along_axis(done, parent, axis=1)
    lengths = jnp.take_along_axis(lengths, parent, axis=1)
    token = jnp.where(parent_done, 0, token)
    tokens = tokens.at[:, :, i].set(token)
    lengths = jnp.where(~parent_done & (token == eos_id), i + 1, lengths)
    done = parent_done | (token == eos_id)
    rows = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    return tokens, top_scores, done, lengths, select_cache_rows(cache, rows)

  tokens, scores, _, lengths, _ = jax.lax.fori_loop(0, max_length, body, state)
  return BeamResult(tokens, scores, lengths)


def beam_search(model: T5, params: Any, encoder_input_tokens: Array, *, beam_size: int,
                max_length: int, eos_id: int = 1) -> BeamResult:
  """T5's beam search (`beam_search_loop`): the decoder fed from the start token."""
  batch, k = encoder_input_tokens.shape[0], beam_size
  enc = jnp.repeat(encoder_input_tokens, k, axis=0)
  encoded = model.apply({"params": params}, enc, method=T5.encode)

  def step(i, tokens, cache):
    del i
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, enc,
                                    tokens[:, None], decode=True, mutable=["cache"],
                                    method=T5.decode)
    return logits[:, 0], variables["cache"]

  return beam_search_loop(init_cache(model, params, encoded, enc, max_length), step,
                          batch=batch, beam_size=k, max_length=max_length, eos_id=eos_id)
