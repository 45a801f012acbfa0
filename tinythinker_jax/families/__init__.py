"""The student families behind the model interface, and how to tell them apart.

| family | model | configs | checkpoints |
|---|---|---|---|
| `encoder_decoder` | `EncoderDecoderModel` (T5 v1.0 / v1.1 / Flan-T5 / mT5) | `models.t5.T5Config` | HF `model_type: t5`/`mt5`, t5x |
| `decoder_only` | `DecoderOnlyModel` (Llama, SmolLM, Qwen2; GPT-2) | `models.llama.LlamaConfig`, `models.gpt2.GPT2Config` | HF `model_type: llama`/`qwen2`/`gpt2`, GGUF (Llama family) |

`from_config(config)` gives the model of a config (gin's `MODEL_CONFIG`),
`from_json(meta)` the model a checkpoint's meta records (meta written before
families existed holds a bare T5 config), and `hf_family(config_json)` the
family of a Hugging Face folder.
"""

from __future__ import annotations

from typing import Any, Mapping

from tinythinker_jax import errors, registries
from tinythinker_jax.families.decoder_only import DecoderOnlyModel
from tinythinker_jax.families.encoder_decoder import EncoderDecoderModel
from tinythinker_jax.models import gpt2, llama, t5
from tinythinker_jax.models.base import BaseModel

FAMILIES: registries.Registry[type[BaseModel]] = registries.Registry("model family")
# Hugging Face `config.json` model types -> family.
HF_MODEL_TYPES: registries.Registry[type[BaseModel]] = registries.Registry(
    "Hugging Face model_type")
# Model config classes -> family (`from_config`).
CONFIGS: dict[type, type[BaseModel]] = {}


def register(family: type[BaseModel], *, configs: tuple = (), hf_model_types: tuple = ()
             ) -> type[BaseModel]:
  """Adds a family: its name, the config classes it is built from, the Hugging
  Face model types it reads."""
  FAMILIES.register(family.family, family)
  for config in configs:
    CONFIGS[config] = family
  for model_type in hf_model_types:
    HF_MODEL_TYPES.register(model_type, family)
  return family


register(EncoderDecoderModel, configs=(t5.T5Config,), hf_model_types=("t5", "mt5"))
register(DecoderOnlyModel, configs=(llama.LlamaConfig, gpt2.GPT2Config),
         hf_model_types=("llama", "qwen2", "gpt2"))


def from_config(config: Any) -> BaseModel:
  """The model for a config (a model passes through unchanged)."""
  if isinstance(config, BaseModel):
    return config
  for kind, family in CONFIGS.items():
    if isinstance(config, kind):
      return family(config)
  raise errors.UserError(f"MODEL_CONFIG: {type(config).__name__} is not a known model "
                         f"config ({', '.join(k.__name__ for k in CONFIGS)})")


def from_json(meta: Mapping[str, Any]) -> BaseModel:
  """The model a checkpoint's meta records (`{"model": {"family", "config"}}`, or
  an older meta's `model_config`, which is T5's)."""
  record = meta.get("model")
  if record is None:
    return EncoderDecoderModel.from_config_json(meta["model_config"])
  try:
    family = FAMILIES[record.get("family", "")]
  except registries.UnknownName as e:
    raise errors.UserError(f"checkpoint meta: {e}") from None
  return family.from_config_json(record["config"])


def hf_family(hf_config: Mapping[str, Any], where: str = "") -> type[BaseModel]:
  """The family of a Hugging Face folder from its `config.json`."""
  model_type = hf_config.get("model_type", "t5")
  if model_type not in HF_MODEL_TYPES:
    raise errors.UserError(f"{where or 'config.json'}: model_type {model_type!r} is not "
                           f"supported (supported: {', '.join(HF_MODEL_TYPES)})")
  return HF_MODEL_TYPES[model_type]


def gguf_family(path: str) -> type[BaseModel]:
  """The family that reads GGUF files."""
  for family in FAMILIES.values():
    if family.reads_gguf:
      return family
  raise errors.UserError(f"{path}: no model family reads GGUF files")
