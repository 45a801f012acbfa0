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

Not yet behind the model interface (no decoding, packing, FLOPs or export).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tinythinker_jax.models import llama
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
