"""Hugging Face GPT-2 folders <-> `models.gpt2` (Fine-tune-CoT's GPT-2 students).

GPT-2's projections are `Conv1D`s, whose weights are stored [in, out] (not
transposed like `nn.Linear`'s); the query, key and value projections are one
`c_attn` of width 3·d. The output layer is tied to the token embedding.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tinythinker_jax import errors, paths
from tinythinker_jax.convert import hf_files
from tinythinker_jax.models.gpt2 import GPT2Config


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> GPT2Config:
  if hf.get("model_type") != "gpt2":
    raise errors.UserError(f"{where}: model_type={hf.get('model_type')!r}; expected 'gpt2'")
  if hf.get("activation_function", "gelu_new") != "gelu_new":
    raise errors.UserError(f"{where}: activation_function={hf['activation_function']!r}; "
                           "expected 'gelu_new'")
  for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
    if hf.get(flag):
      raise errors.UserError(f"{where}: {flag}=true is not supported")
  try:
    return GPT2Config(vocab_size=hf["vocab_size"], emb_dim=hf["n_embd"],
                      num_heads=hf["n_head"], num_layers=hf["n_layer"],
                      mlp_dim=hf.get("n_inner") or 0,
                      max_position_embeddings=hf.get("n_positions", 1024),
                      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
  except (KeyError, ValueError) as e:
    raise errors.UserError(f"{where}: {e!r}") from e


def load_hf_gpt2(path: paths.PathLike) -> tuple[GPT2Config, dict[str, Any]]:
  """(config, params as float32 numpy arrays) of an HF GPT-2 folder."""
  hf_config, config_path, tensors = hf_files.read_folder(path)
  c = config_from_hf(hf_config, config_path)
  tensors = {k.removeprefix("transformer."): np.asarray(v, np.float32)
             for k, v in tensors.items()}
  reader = hf_files.TensorReader(tensors, str(path))
  take = reader.take

  d, h, k, f = c.emb_dim, c.num_heads, c.head_dim, c.inner_dim

  def norm(name):
    return {"scale": take(f"{name}.weight", (d,)), "bias": take(f"{name}.bias", (d,))}

  params: dict[str, Any] = {"embedding": take("wte.weight", (c.vocab_size, d)),
                            "position_embedding": take("wpe.weight",
                                                       (c.max_position_embeddings, d))}
  for i in range(c.num_layers):
    p = f"h.{i}."
    params[f"layers_{i}"] = {
        "pre_attention_norm": norm(p + "ln_1"), "pre_mlp_norm": norm(p + "ln_2"),
        "attention": {
            "qkv_kernel": take(p + "attn.c_attn.weight", (d, 3 * d)).reshape(d, 3, h, k),
            "qkv_bias": take(p + "attn.c_attn.bias", (3 * d,)).reshape(3, h, k),
            "out_kernel": take(p + "attn.c_proj.weight", (d, d)).reshape(h, k, d),
            "out_bias": take(p + "attn.c_proj.bias", (d,))},
        "mlp_in_kernel": take(p + "mlp.c_fc.weight", (d, f)),
        "mlp_in_bias": take(p + "mlp.c_fc.bias", (f,)),
        "mlp_out_kernel": take(p + "mlp.c_proj.weight", (f, d)),
        "mlp_out_bias": take(p + "mlp.c_proj.bias", (d,))}
  params["final_norm"] = norm("ln_f")
  reader.check_all_used("GPT-2", lambda name: name == "lm_head.weight" or
                        name.endswith(("attn.bias", "attn.masked_bias")))
  return c, params


def save_hf_gpt2(c: GPT2Config, params: dict[str, Any], path: paths.PathLike, *,
                 max_shard_bytes: int = 2 << 30) -> None:
  """An HF GPT-2 folder (`config.json` last) that transformers loads."""
  folder = paths.as_path(path)
  folder.mkdir(parents=True, exist_ok=True)
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  d = c.emb_dim
  tensors = {"transformer.wte.weight": f32(params["embedding"]),
             "transformer.wpe.weight": f32(params["position_embedding"]),
             "transformer.ln_f.weight": f32(params["final_norm"]["scale"]),
             "transformer.ln_f.bias": f32(params["final_norm"]["bias"])}
  for i in range(c.num_layers):
    layer, p = params[f"layers_{i}"], f"transformer.h.{i}."
    attention = layer["attention"]
    tensors.update({
        p + "ln_1.weight": f32(layer["pre_attention_norm"]["scale"]),
        p + "ln_1.bias": f32(layer["pre_attention_norm"]["bias"]),
        p + "ln_2.weight": f32(layer["pre_mlp_norm"]["scale"]),
        p + "ln_2.bias": f32(layer["pre_mlp_norm"]["bias"]),
        p + "attn.c_attn.weight": f32(f32(attention["qkv_kernel"]).reshape(d, 3 * d)),
        p + "attn.c_attn.bias": f32(f32(attention["qkv_bias"]).reshape(3 * d)),
        p + "attn.c_proj.weight": f32(f32(attention["out_kernel"]).reshape(d, d)),
        p + "attn.c_proj.bias": f32(attention["out_bias"]),
        p + "mlp.c_fc.weight": f32(layer["mlp_in_kernel"]),
        p + "mlp.c_fc.bias": f32(layer["mlp_in_bias"]),
        p + "mlp.c_proj.weight": f32(layer["mlp_out_kernel"]),
        p + "mlp.c_proj.bias": f32(layer["mlp_out_bias"])})
  hf_files.save_tensors(tensors, folder, max_shard_bytes=max_shard_bytes)
  config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c.vocab_size, "n_embd": d, "n_head": c.num_heads,
            "n_layer": c.num_layers, "n_inner": c.mlp_dim or None,
            "n_positions": c.max_position_embeddings,
            "layer_norm_epsilon": c.layer_norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": True, "torch_dtype": "float32"}
  paths.write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True))
