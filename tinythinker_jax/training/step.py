"""The train state and a jitted sequence-to-sequence train step."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tinythinker_jax.training import losses

Array = jax.Array
Batch = dict[str, Array]


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params))


def shift_right(targets: Array) -> Array:
  """Decoder inputs for teacher forcing: targets shifted right, 0 first."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def seq2seq_loss(apply_fn: Callable, params: Any, batch: Batch,
                 dropout_rng: Optional[Array] = None, *, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
  """Mean token cross-entropy over real target tokens, and metrics."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  logits = apply_fn({"params": params}, batch["encoder_input_tokens"],
                    batch["decoder_input_tokens"], enable_dropout=dropout_rng is not None,
                    rngs=rngs)
  targets = batch["decoder_target_tokens"]
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  total, total_z, weight_sum = losses.compute_weighted_cross_entropy(
      logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss)
  denom = jnp.maximum(weight_sum, 1.0)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
  metrics = {"loss": total / denom, "z_loss": total_z / denom,
             "accuracy": jnp.sum(correct) / denom, "num_tokens": weight_sum}
  return total / denom, metrics


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation, *,
                    z_loss: float = 0.0, label_smoothing: float = 0.0,
                    dropout: bool = False) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)`, ready for jax.jit."""

  def step(state: TrainState, batch: Batch, rng: Array):
    dropout_rng = jax.random.fold_in(rng, state.step) if dropout else None
    grad_fn = jax.value_and_grad(
        lambda p: seq2seq_loss(apply_fn, p, batch, dropout_rng, z_loss=z_loss,
                               label_smoothing=label_smoothing), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
