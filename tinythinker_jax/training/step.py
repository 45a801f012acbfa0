"""The train state and the jitted train step (with microbatched accumulation)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Batch = dict[str, Array]
# Microbatch i's dropout key folds MICROBATCH_KEYS + i into its step's key, apart
# from the small integers another stream folds (on-policy sampling's steps).
MICROBATCH_KEYS = 1 << 30


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params))


def shift_right(targets: Array, segment_ids: Optional[Array] = None) -> Array:
  """Decoder inputs for teacher forcing: targets shifted right, 0 first.

  With `segment_ids` (packed rows) the shift restarts in each segment: its
  first input is 0, not the previous example's EOS (seqio's
  `make_autoregressive_inputs` with `sequence_id`).
  """
  shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  if segment_ids is None:
    return shifted
  previous = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
  return jnp.where(segment_ids == previous, shifted, 0)


def nonpadding_tokens(batch: Batch) -> Array:
  """The batch's real tokens: non-zero encoder inputs and targets (every
  `*target_tokens` feature; a preference pair's prompt counts once)."""
  names = [k for k in batch if k == "encoder_input_tokens" or k.endswith("target_tokens")]
  return sum(jnp.sum(batch[k] != 0, dtype=jnp.float32) for k in names)


def mean_loss(model, params: Any, batch: Batch,
              dropout_rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
  """The model's normalized loss on one batch, and its metric sums."""
  total, sums = model.loss_sums(params, batch, dropout_rng)
  return total / model.normalizer(sums), sums


def summarize(model, sums: dict[str, Array]) -> dict[str, Array]:
  """Per-batch metrics from metric sums; each model defines its own."""
  return model.metrics(sums)


def make_train_step(model, optimizer: optax.GradientTransformation, *,
                    num_microbatches: int = 1, dropout: bool = False) -> Callable:
  """`step(state, batch, rng) -> (state, metrics)`; jit it with shardings.

  With `num_microbatches > 1` the batch is split along its first axis and the
  gradients of the summed losses accumulated with `lax.scan`; the sum is
  divided once by the normalizer of the whole batch, so the update equals the
  single-batch update.

  `aux` (a pytree, placed by the trainer) is what an objective needs beside the
  batch at every step: a teacher's parameters and host-drawn flags
  (`training.distillation`); an objective with `prepare_batch` rewrites the
  whole batch from the current parameters first (on-policy sampling).
  """
  # A model whose loss is normalised by whole-batch counts (DPO's batch-token
  # NLL) takes them, computed before the split, in every microbatch.
  batch_totals = getattr(model, "batch_totals", None)
  prepare_batch = getattr(model, "prepare_batch", None)

  def loss_fn(params, batch, rng, totals, aux):
    kwargs = {} if totals is None else {"totals": totals}
    if aux is not None:
      kwargs["aux"] = aux
    return model.loss_sums(params, batch, rng, **kwargs)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Batch, rng: Array, aux: Any = None):
    if prepare_batch is not None:
      # On-policy sampling's keys: fold_in(fold_in(rng, 1), step). Dropout's are
      # fold_in(rng, step), a microbatch's a fold of that at MICROBATCH_KEYS + its
      # index, so neither stream can meet the other.
      batch = prepare_batch(state.params, batch,
                            jax.random.fold_in(jax.random.fold_in(rng, 1), state.step), aux)
    totals = None if batch_totals is None else batch_totals(batch)
    dropout_rng = jax.random.fold_in(rng, state.step) if dropout else None
    if num_microbatches == 1:
      grads, sums = grad_fn(state.params, batch, dropout_rng, totals, aux)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) +
                              x.shape[1:]), batch)

      def body(carry, inputs):
        index, microbatch = inputs
        r = (None if dropout_rng is None else
             jax.random.fold_in(dropout_rng, MICROBATCH_KEYS + index))
        g, s = grad_fn(state.params, microbatch, r, totals, aux)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), dropout_rng, totals,
          aux))
      (grads, sums), _ = jax.lax.scan(body, zeros,
                                      (jnp.arange(num_microbatches), micro))
    denom = model.normalizer(sums)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = summarize(model, sums)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["nonpadding_tokens"] = nonpadding_tokens(batch)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
