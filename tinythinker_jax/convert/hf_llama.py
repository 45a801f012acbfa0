"""Hugging Face Llama-family folders (Llama, SmolLM, Qwen2) -> `models.llama`.

Reads `config.json` and the weights in any layout `save_pretrained` writes
(`hf_files`), checks every tensor's shape, and returns the config and the
parameter tree of `LlamaModule` (unboxed). Variants read from the config:
grouped-query attention, tied embeddings, Qwen2's attention biases, the RoPE
base. Scaled RoPE (`rope_scaling`) is refused by name, not silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tinythinker_jax import errors, paths
from tinythinker_jax.convert import hf_files
from tinythinker_jax.models.llama import LlamaConfig

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> LlamaConfig:
  architecture = (hf.get("architectures") or ["?"])[0]
  if architecture not in ARCHITECTURES:
    raise errors.UserError(f"{where}: architectures={architecture!r}; the Llama family "
                           f"reads {ARCHITECTURES}")
  # transformers 5 writes `rope_parameters`; older folders `rope_theta` and
  # `rope_scaling`.
  rope = dict(hf.get("rope_scaling") or {}, **(hf.get("rope_parameters") or {}))
  if (rope.get("rope_type") or rope.get("type")) not in (None, "default"):
    raise errors.UserError(f"{where}: scaled RoPE ({rope}) is not supported yet")
  theta = float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0)
  if hf.get("hidden_act", "silu") != "silu":
    raise errors.UserError(f"{where}: hidden_act={hf['hidden_act']!r}; expected 'silu'")
  if hf.get("mlp_bias"):
    raise errors.UserError(f"{where}: mlp_bias=true is not supported")
  if hf.get("use_sliding_window"):
    raise errors.UserError(f"{where}: use_sliding_window=true (sliding-window attention) "
                           "is not supported")
  if hf.get("attention_bias") and architecture == "LlamaForCausalLM":
    raise errors.UserError(f"{where}: attention_bias=true on a Llama model (an o_proj "
                           "bias) is not supported")
  heads = hf["num_attention_heads"]
  qwen2 = architecture == "Qwen2ForCausalLM"
  return llama_config(where,
      vocab_size=hf["vocab_size"], emb_dim=hf["hidden_size"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),  # transformers' default for both
      rope_theta=theta,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=qwen2,
      max_position_embeddings=hf.get("max_position_embeddings", 2048))


def llama_config(where: str, **fields) -> LlamaConfig:
  """A LlamaConfig whose errors name the file it was read from."""
  try:
    return LlamaConfig(**fields)
  except ValueError as e:
    raise errors.UserError(f"{where}: {e}") from e


def load_hf_llama(path: paths.PathLike) -> tuple[LlamaConfig, dict[str, Any]]:
  """(config, params) of an HF folder, params as float32 numpy arrays."""
  hf_config, config_path, tensors = hf_files.read_folder(path)
  config = config_from_hf(hf_config, config_path)
  tensors = {k.removeprefix("model."): np.asarray(v, np.float32) for k, v in tensors.items()}
  return config, params_from_tensors(config, tensors, str(path))


def params_from_tensors(c: LlamaConfig, tensors: dict[str, np.ndarray],
                        where: str) -> dict[str, Any]:
  """`LlamaModule`'s parameters from tensors named as in an HF folder (without
  the `model.` prefix); every tensor is checked and every one must be used."""
  reader = hf_files.TensorReader(tensors, where)
  take = reader.take

  def heads_in(name: str, heads: int) -> np.ndarray:  # [h*k, d] -> [d, h, k]
    return take(name, (heads * c.head_dim, c.emb_dim)).T.reshape(
        c.emb_dim, heads, c.head_dim)

  params: dict[str, Any] = {"embedding": take("embed_tokens.weight",
                                              (c.vocab_size, c.emb_dim))}
  for i in range(c.num_layers):
    p = f"layers.{i}."
    attention = {
        "query_kernel": heads_in(p + "self_attn.q_proj.weight", c.num_heads),
        "key_kernel": heads_in(p + "self_attn.k_proj.weight", c.num_kv_heads),
        "value_kernel": heads_in(p + "self_attn.v_proj.weight", c.num_kv_heads),
        "out_kernel": take(p + "self_attn.o_proj.weight",
                           (c.emb_dim, c.num_heads * c.head_dim)).T.reshape(
                               c.num_heads, c.head_dim, c.emb_dim)}
    if c.attention_bias:
      for ours, theirs, heads in (("query", "q", c.num_heads), ("key", "k", c.num_kv_heads),
                                  ("value", "v", c.num_kv_heads)):
        attention[f"{ours}_bias"] = take(p + f"self_attn.{theirs}_proj.bias",
                                         (heads * c.head_dim,)).reshape(heads, c.head_dim)
    params[f"layers_{i}"] = {
        "pre_attention_norm": {"scale": take(p + "input_layernorm.weight", (c.emb_dim,))},
        "attention": attention,
        "pre_mlp_norm": {"scale": take(p + "post_attention_layernorm.weight",
                                       (c.emb_dim,))},
        "mlp": {"gate_kernel": take(p + "mlp.gate_proj.weight", (c.mlp_dim, c.emb_dim)).T,
                "up_kernel": take(p + "mlp.up_proj.weight", (c.mlp_dim, c.emb_dim)).T,
                "down_kernel": take(p + "mlp.down_proj.weight",
                                    (c.emb_dim, c.mlp_dim)).T}}
  params["final_norm"] = {"scale": take("norm.weight", (c.emb_dim,))}
  if not c.tie_word_embeddings:
    params["lm_head"] = take("lm_head.weight", (c.vocab_size, c.emb_dim)).T
  reader.check_all_used("the Llama family", lambda name: name == "lm_head.weight" or
                        name.endswith("rotary_emb.inv_freq"))
  return params


def hf_config(c: LlamaConfig) -> dict[str, Any]:
  """`config.json` of an HF folder for `c` (Qwen2 where it has attention biases)."""
  qwen2 = c.attention_bias
  return {
      "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
      "model_type": "qwen2" if qwen2 else "llama",
      "vocab_size": c.vocab_size, "hidden_size": c.emb_dim,
      "intermediate_size": c.mlp_dim, "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
      "rope_theta": c.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
      "tie_word_embeddings": c.tie_word_embeddings,
      "max_position_embeddings": c.max_position_embeddings,
      **({} if qwen2 else {"attention_bias": False, "mlp_bias": False}),
      "torch_dtype": "float32"}


def save_hf_llama(c: LlamaConfig, params: dict[str, Any], path: paths.PathLike, *,
                  max_shard_bytes: int = 2 << 30) -> None:
  """Writes an HF folder (safetensors, then `config.json` last, so a folder
  that has it is complete) that transformers loads as LlamaForCausalLM or
  Qwen2ForCausalLM."""
  folder = paths.as_path(path)
  folder.mkdir(parents=True, exist_ok=True)
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  tensors = {"model.embed_tokens.weight": f32(params["embedding"]),
             "model.norm.weight": f32(params["final_norm"]["scale"])}
  for i in range(c.num_layers):
    layer, p = params[f"layers_{i}"], f"model.layers.{i}."
    attention = layer["attention"]

    def heads_out(kernel):  # [d, h, k] -> [h*k, d]
      kernel = f32(kernel)
      return f32(kernel.reshape(kernel.shape[0], -1).T)
    tensors.update({
        p + "input_layernorm.weight": f32(layer["pre_attention_norm"]["scale"]),
        p + "post_attention_layernorm.weight": f32(layer["pre_mlp_norm"]["scale"]),
        p + "self_attn.q_proj.weight": heads_out(attention["query_kernel"]),
        p + "self_attn.k_proj.weight": heads_out(attention["key_kernel"]),
        p + "self_attn.v_proj.weight": heads_out(attention["value_kernel"]),
        p + "self_attn.o_proj.weight": f32(f32(attention["out_kernel"]).reshape(
            -1, c.emb_dim).T),
        p + "mlp.gate_proj.weight": f32(f32(layer["mlp"]["gate_kernel"]).T),
        p + "mlp.up_proj.weight": f32(f32(layer["mlp"]["up_kernel"]).T),
        p + "mlp.down_proj.weight": f32(f32(layer["mlp"]["down_kernel"]).T)})
    if c.attention_bias:
      for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
        tensors[p + f"self_attn.{theirs}_proj.bias"] = f32(attention[f"{ours}_bias"]).reshape(-1)
  if not c.tie_word_embeddings:
    tensors["lm_head.weight"] = f32(f32(params["lm_head"]).T)
  hf_files.save_tensors(tensors, folder, max_shard_bytes=max_shard_bytes)
  paths.write_text(folder / "config.json", json.dumps(hf_config(c), indent=2, sort_keys=True))
