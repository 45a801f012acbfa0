"""GGUF files of the Llama family (llama.cpp's format) -> `models.llama`.

Reads the architecture's hyperparameters from the file's metadata, dequantises
every tensor with the `gguf` package (llama.cpp's own reader: F32, F16, Q8_0,
Q4_0, Q4_1, the K-quants, ...), undoes the row order llama.cpp's converter gives
the query and key projections (it interleaves each head's two rotary halves),
and maps the tensors to `LlamaModule`'s parameters. A file without `output.weight`
ties its output projection to the embedding (SmolLM2).

`pip install gguf` (installed with the test extra).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tinythinker_jax import errors
from tinythinker_jax.convert.hf_llama import llama_config, params_from_tensors
from tinythinker_jax.models.llama import LlamaConfig

# GGUF tensor name -> HF name (per layer: `blk.N.` -> `layers.N.`).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                 "output.weight": "lm_head.weight"}


REQUIRED = object()


def field(reader, key: str, where: str, default: Any = REQUIRED):
  """The value of metadata `key` (`default` when it is missing and given)."""
  value = reader.fields.get(key)
  if value is None:
    if default is not REQUIRED:
      return default
    raise errors.UserError(f"{where}: GGUF metadata {key!r} is missing")
  return value.contents()


def open_reader(path: str):
  """`(gguf module, GGUFReader)` of a GGUF file, with clear errors."""
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.UserError("reading GGUF files needs the gguf package: pip install "
                           "gguf") from e
  if not os.path.exists(path):
    raise errors.MissingFileError(f"{path}: GGUF file not found")
  return gguf, gguf.GGUFReader(path)


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
  """The inverse of llama.cpp's converter's row order for q/k projections
  ([heads * head_dim, d]: each head's rows as (half, pair) -> (pair, half))."""
  rows = weight.shape[0]
  return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(
      1, 2).reshape(weight.shape)


def load_gguf_llama(path: str) -> tuple[LlamaConfig, dict[str, Any]]:
  """(config, params as float32 numpy arrays) of a Llama-architecture GGUF file."""
  gguf, reader = open_reader(path)
  architecture = field(reader, "general.architecture", path)
  if architecture not in ("llama", "qwen2"):
    raise errors.UserError(f"{path}: general.architecture={architecture!r}; the Llama "
                           "family reads 'llama' and 'qwen2'")
  a = architecture
  heads = int(field(reader, f"{a}.attention.head_count", path))
  kv_heads = int(field(reader, f"{a}.attention.head_count_kv", path, heads))
  emb = int(field(reader, f"{a}.embedding_length", path))
  names = {t.name for t in reader.tensors}
  embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embedding is None:
    raise errors.UserError(f"{path}: no token_embd.weight tensor")
  config = llama_config(path,
      vocab_size=int(embedding.shape[1]), emb_dim=emb, num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=int(field(reader, f"{a}.attention.key_length", path, emb // heads)),
      mlp_dim=int(field(reader, f"{a}.feed_forward_length", path)),
      num_layers=int(field(reader, f"{a}.block_count", path)),
      rms_norm_eps=float(field(reader, f"{a}.attention.layer_norm_rms_epsilon", path)),
      rope_theta=float(field(reader, f"{a}.rope.freq_base", path, 10000.0)),
      tie_word_embeddings="output.weight" not in names,
      attention_bias=architecture == "qwen2",
      max_position_embeddings=int(field(reader, f"{a}.context_length", path, 2048)))
  if field(reader, f"{a}.rope.scaling.type", path, "none") not in ("none", "linear") or \
      float(field(reader, f"{a}.rope.scaling.factor", path, 1.0)) != 1.0:
    raise errors.UserError(f"{path}: scaled RoPE is not supported yet")
  tensors: dict[str, np.ndarray] = {}
  for t in reader.tensors:
    value = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    value = value.reshape([int(d) for d in reversed(t.shape.tolist())])
    if t.name in _GLOBAL_NAMES:
      name = _GLOBAL_NAMES[t.name]
    else:
      parts = t.name.split(".")  # blk.N.attn_q.weight
      if parts[0] != "blk" or parts[2] not in _LAYER_NAMES:
        raise errors.UserError(f"{path}: tensor {t.name!r} is not one the Llama family reads")
      name = f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
      # llama.cpp's converter reorders q and k rows for llama (not for qwen2).
      if architecture == "llama" and parts[2] in ("attn_q", "attn_k") and \
          parts[3] == "weight":
        value = unpermute(value, heads if parts[2] == "attn_q" else kv_heads)
    tensors[name] = value
  return config, params_from_tensors(config, tensors, path)
