"""T5 (v1.0, v1.1, Flan-T5, mT5) behind the model interface (`models.base.BaseModel`).

`EncoderDecoderModel(config)` composes what is T5-specific: the Flax module
(`models.t5.T5`), its KV-cache decoding (`decoding`), its FLOPs count
(`models.flops`), its layer layouts (`t5.convert_params`) and its checkpoint
converters (`convert.hf`, `convert.t5x`). Phase-1 batches carry
`encoder_input_tokens`, `decoder_input_tokens` (targets shifted right) and,
when packed, `encoder_segment_ids` / `decoder_segment_ids`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from tinythinker_jax import decoding
from tinythinker_jax.models import flops, t5
from tinythinker_jax.models.base import Array, BaseModel, DecodeResult
from tinythinker_jax.training import losses, step


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel(BaseModel):
  """A T5 encoder-decoder; see the module docstring."""

  config: t5.T5Config
  family: ClassVar[str] = "encoder_decoder"

  @property
  def module(self) -> t5.T5:
    return t5.T5(self.config)

  @classmethod
  def from_config_json(cls, fields: Mapping[str, Any]) -> "EncoderDecoderModel":
    fields = dict(fields)
    fields["mlp_activations"] = tuple(fields["mlp_activations"])
    known = {f.name for f in dataclasses.fields(t5.T5Config)}
    return cls(t5.T5Config(**{k: v for k, v in fields.items() if k in known}))

  # -------------------------------------------------------------- parameters

  def init_params(self, rng: Array) -> Any:
    return t5.init_params(self.config, rng)

  def convert_params(self, params: Any) -> Any:
    return t5.convert_params(params, self.config)

  # ---------------------------------------------------------- forward passes

  def logits(self, params: Any, batch: Mapping[str, Array], *,
             dropout_rng: Optional[Array] = None) -> Array:
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"],
                             encoder_segment_ids=batch.get("encoder_segment_ids"),
                             decoder_segment_ids=batch.get("decoder_segment_ids"),
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def token_logps(self, params: Any, inputs: Array, targets: Array, *,
                  dropout_rng: Optional[Array] = None,
                  input_segment_ids: Optional[Array] = None,
                  target_segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
    batch = {"encoder_input_tokens": inputs,
             "decoder_input_tokens": step.shift_right(targets, target_segment_ids),
             "encoder_segment_ids": input_segment_ids,
             "decoder_segment_ids": target_segment_ids}
    logits = self.logits(params, batch, dropout_rng=dropout_rng)
    return losses.token_logps(logits, targets), logits

  # ---------------------------------------------------------------- decoding

  def decode(self, params: Any, inputs: Array, *, max_length: int, eos_id: int = 1,
             rng: Optional[Array] = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, num_samples: int = 1, num_beams: int = 1,
             vocab_rows: Optional[int] = None) -> DecodeResult:
    module = self.module
    if temperature == 0 and num_beams > 1:
      beams = decoding.beam_search(module, params, inputs, beam_size=num_beams,
                                   max_length=max_length, eos_id=eos_id)
      best = beams.tokens[:, 0]
      return DecodeResult(best, jnp.zeros(best.shape, jnp.float32).at[:, 0].set(
          beams.scores[:, 0]), beams.lengths[:, 0])
    if temperature == 0:
      return decoding.greedy_decode(module, params, inputs, max_length=max_length,
                                    eos_id=eos_id)
    return decoding.sample_decode(module, params, inputs, rng, max_length=max_length,
                                  num_samples=num_samples, temperature=temperature,
                                  top_k=top_k, top_p=top_p, eos_id=eos_id,
                                  vocab_rows=vocab_rows)

  # ------------------------------------------------------------------- FLOPs

  def train_step_flops(self, shapes: Mapping[str, Sequence[int]]) -> Optional[int]:
    return flops.batch_step_flops(self.config, shapes)

  def forward_flops(self, batch: int, input_length: int, target_length: int) -> int:
    return flops.forward_flops(self.config, batch, input_length, target_length)

  def encode_flops(self, input_length: int) -> int:
    return flops.encode_flops(self.config, input_length)

  def decode_steps_flops(self, input_length: int, new_tokens: int) -> int:
    return flops.decode_steps_flops(self.config, input_length, new_tokens)

  # -------------------------------------------------------- weights in/out

  @classmethod
  def load_hf(cls, path: str, **options) -> tuple["EncoderDecoderModel", Any]:
    from tinythinker_jax.convert import hf  # pylint: disable=import-outside-toplevel
    config, params = hf.load_hf_t5(path, **options)
    return cls(config), params

  def save_hf(self, params: Any, path: str, *, dtype: Optional[str] = None) -> None:
    from tinythinker_jax.convert import hf  # pylint: disable=import-outside-toplevel
    hf.save_hf_t5(self.config, nn.unbox(params), path, dtype=dtype)

  def load_t5x(self, path: str) -> Any:
    from tinythinker_jax.convert import t5x  # pylint: disable=import-outside-toplevel
    # t5x names its layers one by one (unscanned); `convert_params` restacks.
    return t5x.load_t5x_checkpoint(path, self.config.replace(scan_layers=False))
