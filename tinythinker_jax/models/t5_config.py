"""T5's hyperparameters (`T5Config`, t5x's field names) and what they choose from."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from tinythinker_jax import errors, platforms

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    # t5x's 'gelu' and Hugging Face's 'gelu_new' are the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_REMAT_POLICIES = ("none", "full", "minimal")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 model; field names are t5x's `T5Config` names.

  `dtype` is the compute dtype ('auto': by platform, see `compute_dtype`);
  parameters are stored in `param_dtype`.
  `mlp_activations=('relu',)` with `logits_via_embedding=True` is T5 v1.0;
  `('gelu', 'linear')` with untied logits is T5 v1.1 and Flan-T5.
  """

  vocab_size: int = 32128
  dtype: str = "auto"
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ("relu",)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  float32_attention_logits: bool = True
  param_dtype: str = "float32"
  remat_policy: str = "none"
  # Run each layer stack as one `nn.scan` over stacked parameters (leading
  # `layers` axis) instead of unrolling it: compile time stops growing with
  # depth. `scan_params` / `unscan_params` convert between the two layouts.
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    for name in self.mlp_activations:
      if name not in _ACTIVATIONS:
        raise errors.UserError(
            f"T5Config.mlp_activations: unknown activation {name!r}; "
            f"known: {sorted(_ACTIVATIONS)}")
    for field, allowed in (("dtype", sorted(_DTYPES) + [platforms.AUTO]),
                           ("param_dtype", sorted(_DTYPES))):
      if getattr(self, field) not in allowed:
        raise errors.UserError(f"T5Config.{field}={getattr(self, field)!r}; "
                               f"expected one of {allowed}")
    if self.remat_policy not in _REMAT_POLICIES:
      raise errors.UserError(f"T5Config.remat_policy={self.remat_policy!r}; "
                       f"expected one of {_REMAT_POLICIES}")
    for field in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                  "num_encoder_layers", "num_decoder_layers"):
      if getattr(self, field) <= 0:
        raise errors.UserError(f"T5Config.{field} must be positive, "
                         f"got {getattr(self, field)}")

  @property
  def compute_dtype(self):
    """The activations' dtype; 'auto' is bfloat16 on TPUs and GPUs, float32 on
    CPUs (`platforms.activation_dtype`), resolved where the model runs."""
    return _DTYPES[platforms.activation_dtype(self.dtype)]

  @property
  def parameter_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)
