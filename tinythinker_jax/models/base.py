"""The model interface every student architecture implements (t5x's `BaseModel`).

The trainer, the losses (`training.objectives`, `training.dpo`), the sampler
and inference (`student.Student`), the FLOPs/MFU metrics and the weight loader
(`weights`) call these methods only, never a module of one architecture, so a
new family (a decoder-only student) is a new subclass, not a fork of them.

| part | methods |
|---|---|
| parameters | `init_params` (boxed with logical axes), `abstract_params` (shapes and axes, traced once), `convert_params` (layer layout) |
| forward passes | `logits` (teacher-forced, phase-1 features), `token_logps` (per-token log-probabilities of given targets: SFT scoring, DPO's policy and reference) |
| decoding | `decode`: greedy, sampled (several samples per input) or beam search over a KV cache |
| FLOPs | `train_step_flops` (a step's batch shapes), `forward_flops`, `encode_flops`, `decode_steps_flops` |
| identity | `family`, `to_json` / `from_config_json` (checkpoint meta, `families.from_json`), `replace` |
| weights in and out | `load_hf`, `save_hf` (Hugging Face folders), `load_t5x` where the family has one |

Models are frozen dataclasses of their config, so they hash and compare by
value (jit static arguments, caches).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from tinythinker_jax import errors

Array = jax.Array


class DecodeResult(NamedTuple):
  tokens: Array  # [rows, max_length]; 0 after the first EOS.
  token_logprobs: Array  # [rows, max_length]; 0 where tokens are 0 (beam: the score at 0).
  lengths: Array  # [rows]: tokens up to and including EOS (max_length if none).


@dataclasses.dataclass(frozen=True)
class BaseModel(abc.ABC):
  """A student architecture with its config; see the module docstring."""

  config: Any
  family: ClassVar[str] = ""

  # ---------------------------------------------------------------- identity

  def replace(self, **changes) -> "BaseModel":
    """The same model with config fields changed (e.g. `dropout_rate`)."""
    return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

  def to_json(self) -> dict[str, Any]:
    """What a checkpoint's meta records (`families.from_json` reads it back)."""
    return {"family": self.family, "config": dataclasses.asdict(self.config)}

  @classmethod
  @abc.abstractmethod
  def from_config_json(cls, fields: Mapping[str, Any]) -> "BaseModel":
    """The model whose `to_json()["config"]` is `fields`."""

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  @property
  def dropout_rate(self) -> float:
    return self.config.dropout_rate

  @property
  def scan_layers(self) -> bool:
    return bool(getattr(self.config, "scan_layers", False))

  # -------------------------------------------------------------- parameters

  @abc.abstractmethod
  def init_params(self, rng: Array) -> Any:
    """Parameters boxed with their logical axes (`flax.linen.LogicallyPartitioned`);
    call under `jax.jit` (or `jax.eval_shape`)."""

  def abstract_params(self) -> Any:
    """The boxed parameter shapes and logical axes, without computing them
    (traced once per model)."""
    return _abstract_params(self)

  def convert_params(self, params: Any) -> Any:
    """`params` in this config's layout (e.g. scanned layer stacks) from any
    layout the family stores."""
    return params

  # ---------------------------------------------------------- forward passes

  @abc.abstractmethod
  def logits(self, params: Any, batch: Mapping[str, Array], *,
             dropout_rng: Optional[Array] = None) -> Array:
    """Teacher-forced logits `[batch, target_length, vocab]` of a phase-1 batch
    (its inputs, shifted targets and, when packed, segment ids)."""

  @abc.abstractmethod
  def token_logps(self, params: Any, inputs: Array, targets: Array, *,
                  dropout_rng: Optional[Array] = None,
                  input_segment_ids: Optional[Array] = None,
                  target_segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
    """`(log p(targets[t] | inputs, targets[:t]) [batch, length], logits)` for
    EOS-terminated, 0-padded targets; padding positions are 0."""

  def continuation_logps(self, params: Any, inputs: Array, continuations: Array) -> Array:
    """`log p(continuations[r, j, t] | inputs[r], continuations[r, j, :t])`
    `[rows, k, length]` for `k` 0-padded continuations of each prompt (no EOS
    added): here the prompt repeated for each; a family whose prompt can be read
    once (a decoder-only KV cache) overrides it."""
    rows, k, length = continuations.shape
    logps, _ = self.token_logps(params, jnp.repeat(inputs, k, axis=0),
                                continuations.reshape(rows * k, length))
    return logps.reshape(rows, k, length)

  # ---------------------------------------------------------------- decoding

  @abc.abstractmethod
  def decode(self, params: Any, inputs: Array, *, max_length: int, eos_id: int = 1,
             rng: Optional[Array] = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, num_samples: int = 1, num_beams: int = 1,
             vocab_rows: Optional[int] = None) -> DecodeResult:
    """Continuations of `inputs`: greedy (`temperature=0`), by beam search
    (`num_beams > 1`; the best beam, its total log-probability at position 0),
    or `num_samples` samples per input (rows `i * num_samples + j`; `rng` one key
    per input). Log-probabilities are the model's own (temperature 1). With
    `vocab_rows`, samples never draw padding or ids beyond the tokenizer's
    (`decoding.real_token_logits`)."""

  # ------------------------------------------------------------------- FLOPs

  @abc.abstractmethod
  def train_step_flops(self, shapes: Mapping[str, Sequence[int]]) -> Optional[int]:
    """A training step's model FLOPs from its batch's feature shapes (None when
    the features are not the family's)."""

  @abc.abstractmethod
  def forward_flops(self, batch: int, input_length: int, target_length: int) -> int:
    """A teacher-forced forward pass (scoring)."""

  @abc.abstractmethod
  def encode_flops(self, input_length: int) -> int:
    """Reading one prompt of `input_length` before decoding."""

  @abc.abstractmethod
  def decode_steps_flops(self, input_length: int, new_tokens: int) -> int:
    """One row's `new_tokens` cached decoding steps after a prompt."""

  # -------------------------------------------------------- weights in/out

  @classmethod
  @abc.abstractmethod
  def load_hf(cls, path: str, **options) -> tuple["BaseModel", Any]:
    """(model, host parameters) from a Hugging Face folder of this family."""

  @abc.abstractmethod
  def save_hf(self, params: Any, path: str, *, dtype: Optional[str] = None) -> None:
    """Writes a Hugging Face folder (`config.json` last) that transformers loads."""

  @classmethod
  def hf_vocabulary(cls, folder: str) -> str:
    """The vocabulary file a Hugging Face folder of this family carries ("" when
    none): T5's SentencePiece `spiece.model` by default."""
    from tinythinker_jax import paths  # pylint: disable=import-outside-toplevel
    spiece = paths.as_path(folder) / "spiece.model"
    return str(spiece) if spiece.exists() else ""

  # A family that reads GGUF files (`load_gguf`) says so.
  reads_gguf: bool = False

  @classmethod
  def load_gguf(cls, path: str) -> tuple["BaseModel", Any]:
    """(model, host parameters) of a GGUF file of this family."""
    raise errors.UserError(f"{path}: {cls.family} models are not read from GGUF files")

  def map_vocabulary_rows(self, params: Any, fn: Callable[[Any], Any]
                          ) -> tuple["BaseModel", Any]:
    """(model, host parameters) with `fn` applied to every table indexed by token
    id (`[vocab, ...]`; `fn` may change the number of rows): how weights move
    between a pretrained tokenizer's id order and the project's (`hf_tokenizer`)."""
    raise errors.UserError(f"{self.family} models do not take a pretrained tokenizer's "
                           "vocabulary (decoder-only students do)")

  def load_t5x(self, path: str) -> Any:
    """Host parameters from a t5x checkpoint (families that t5x trains)."""
    raise NotImplementedError(f"{self.family} models have no t5x checkpoints")


@functools.lru_cache(maxsize=16)
def _abstract_params(model: BaseModel) -> Any:
  return jax.eval_shape(model.init_params, jax.random.key(0))
