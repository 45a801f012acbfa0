"""Hugging Face T5 folders <-> (T5Config, params).

Reads `config.json` plus weights in any of the layouts `save_pretrained`
writes (`hf_files`). Writes safetensors (sharded above `max_shard_bytes`) and
a `config.json` that `transformers.T5ForConditionalGeneration.from_pretrained`
loads.

PyTorch stores `nn.Linear` weights as `[out, in]`; our kernels are
`[in, out]` with attention projections split into `[embed, heads, kv]`.

The output layer. A folder's logits are `lm_head(h * s)` where `s` is
`d_model ** -0.5` when scaled and 1 otherwise, and `lm_head` is tied to
`shared` or not. transformers 5 (`modeling_t5.py`, `configuration_t5.py`)
reads them as follows, and so do we:
- scaled: `scale_decoder_outputs` when the config has it (transformers 5
  writes it), else `tie_word_embeddings` (default true; transformers 4 files);
  never for `model_type: mt5` (transformers 5's MT5 has no scaling).
- tied: `lm_head.weight` is absent, or present with the same values as
  `shared.weight` (transformers 5 always ties, unless both are stored and
  differ; a `.bin` stores both, sharing storage).
Released checkpoints are tied and scaled (T5 v1.0) or untied and unscaled
(v1.1, Flan-T5, mT5): t5x's two output layers, `logits_via_embedding` true
or false. The two mixed kinds (transformers 5 writes a fresh v1.1 or mT5
tied and unscaled, and an untied lm_head under a scaled config is untied and
scaled) load as an untied `logits_dense` holding `lm_head * s` (or
`shared * s`), which gives PyTorch's logits exactly while keeping T5Config
t5x's: every folder then loads under the t5x model gin of its architecture.
The one difference is in later training: a tied-and-unscaled model trains
on here with its output layer untied from the embedding.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np

from tinythinker_jax import errors, paths
from tinythinker_jax.convert import hf_files
from tinythinker_jax.models import t5
from tinythinker_jax.models.t5 import T5Config

log = logging.getLogger(__name__)


# HF `feed_forward_proj` activation name -> ours. HF's gated-gelu is the tanh
# approximation ('gelu_new'); a plain 'gelu' there is the exact erf form.
_HF_TO_ACT = {"relu": "relu", "gelu_new": "gelu", "gelu": "gelu_exact", "silu": "silu"}
_ACT_TO_HF = {v: k for k, v in _HF_TO_ACT.items()}


class CheckpointMismatchError(errors.UserError):
  """A checkpoint does not fit the configuration (missing tensor, wrong shape)."""


def scales_logits(hf_config: Mapping[str, Any]) -> bool:
  """Whether the folder's decoder output is scaled by `d_model ** -0.5` (see top)."""
  if hf_config.get("model_type", "t5") == "mt5":
    return False
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return hf_config.get("tie_word_embeddings", True) is not False


def config_from_hf(hf_config: Mapping[str, Any], *, dtype: str = "auto",
                   lm_head_tied: bool = True) -> T5Config:
  """Builds our T5Config from a Hugging Face `config.json` dictionary.

  `lm_head_tied` says whether the weights tie `lm_head` to `shared` (see the
  module docstring): the output layer is `logits_via_embedding` only when
  the folder is both tied and scaled.
  """
  if hf_config.get("model_type", "t5") not in ("t5", "mt5"):
    raise errors.UserError(f"config.json: model_type={hf_config.get('model_type')!r} is not "
                     "a T5 model")
  proj = hf_config.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  gated = parts[0] == "gated"
  if (gated and len(parts) != 2) or (not gated and len(parts) != 1):
    raise errors.UserError(f"config.json: feed_forward_proj={proj!r} is not '<act>' or "
                     "'gated-<act>'")
  act_name = parts[-1]
  if gated and act_name == "gelu":
    act_name = "gelu_new"  # HF's own backwards-compatibility rule.
  if act_name not in _HF_TO_ACT:
    raise errors.UserError(f"config.json: feed_forward_proj={proj!r}: activation "
                     f"{act_name!r} is not supported ({sorted(_HF_TO_ACT)})")
  act = _HF_TO_ACT[act_name]
  num_layers = hf_config["num_layers"]
  return T5Config(
      vocab_size=hf_config["vocab_size"],
      dtype=dtype,
      emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"],
      num_encoder_layers=num_layers,
      num_decoder_layers=hf_config.get("num_decoder_layers") or num_layers,
      head_dim=hf_config["d_kv"],
      mlp_dim=hf_config["d_ff"],
      mlp_activations=(act, "linear") if gated else (act,),
      dropout_rate=hf_config.get("dropout_rate", 0.1),
      logits_via_embedding=lm_head_tied and scales_logits(hf_config),
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance",
                                                    128),
      layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
  )


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """The `config.json` dictionary for `config`."""
  acts = config.mlp_activations
  if len(acts) == 2 and acts[1] == "linear" and acts[0] in _ACT_TO_HF:
    proj = "gated-gelu" if acts[0] == "gelu" else f"gated-{_ACT_TO_HF[acts[0]]}"
  elif len(acts) == 1 and acts[0] in _ACT_TO_HF:
    proj = _ACT_TO_HF[acts[0]]
    if proj == "gelu_new":
      raise errors.UserError("mlp_activations=('gelu',) (tanh gelu, ungated) has no "
                       "Hugging Face T5 equivalent")
  else:
    raise errors.UserError(f"mlp_activations={acts} has no Hugging Face T5 equivalent")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "feed_forward_proj": proj,
      "tie_word_embeddings": config.logits_via_embedding,
      "scale_decoder_outputs": config.logits_via_embedding,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "initializer_factor": 1.0,
      "is_encoder_decoder": True,
      "decoder_start_token_id": 0,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "use_cache": True,
  }


# One rule per parameter: our path, HF name, and the two layout transforms.
# `to_ours` turns the HF array into our layout given the config; `to_hf` back.
_Rule = tuple[tuple[str, ...], str, Callable[[np.ndarray, T5Config], np.ndarray],
              Callable[[np.ndarray, T5Config], np.ndarray]]


def _transpose(x, cfg):
  return x.T


def _qkv_in(x, cfg):
  return x.T.reshape(cfg.emb_dim, cfg.num_heads, cfg.head_dim)


def _qkv_out(x, cfg):
  return x.reshape(cfg.emb_dim, cfg.num_heads * cfg.head_dim).T


def _o_in(x, cfg):
  return x.T.reshape(cfg.num_heads, cfg.head_dim, cfg.emb_dim)


def _o_out(x, cfg):
  return x.reshape(cfg.num_heads * cfg.head_dim, cfg.emb_dim).T


def _same(x, cfg):
  return x


def _attention_rules(ours: tuple[str, ...], hf: str) -> list[_Rule]:
  rules = [(ours + (p, "kernel"), f"{hf}.{p[0]}.weight", _qkv_in, _qkv_out)
           for p in ("query", "key", "value")]
  rules.append((ours + ("out", "kernel"), f"{hf}.o.weight", _o_in, _o_out))
  return rules


def _mlp_rules(cfg: T5Config, ours: tuple[str, ...], hf: str) -> list[_Rule]:
  names = ["wi"] if len(cfg.mlp_activations) == 1 else [
      f"wi_{i}" for i in range(len(cfg.mlp_activations))]
  rules = [(ours + (n, "kernel"), f"{hf}.{n}.weight", _transpose, _transpose)
           for n in names]
  rules.append((ours + ("wo", "kernel"), f"{hf}.wo.weight", _transpose, _transpose))
  return rules


def _norm_rule(ours: tuple[str, ...], hf: str) -> _Rule:
  return (ours + ("scale",), f"{hf}.weight", _same, _same)


def _rules(cfg: T5Config) -> list[_Rule]:
  rules: list[_Rule] = [
      (("token_embedder", "embedding"), "shared.weight", _same, _same)]
  for stack, n in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    rules.append(((stack, "relpos_bias", "rel_embedding"),
                  f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  _transpose, _transpose))
    for i in range(n):
      ours, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
      if stack == "encoder":
        rules += _attention_rules(ours + ("attention",), f"{hf}.0.SelfAttention")
        rules.append(_norm_rule(ours + ("pre_attention_layer_norm",), f"{hf}.0.layer_norm"))
        rules += _mlp_rules(cfg, ours + ("mlp",), f"{hf}.1.DenseReluDense")
        rules.append(_norm_rule(ours + ("pre_mlp_layer_norm",), f"{hf}.1.layer_norm"))
      else:
        rules += _attention_rules(ours + ("self_attention",), f"{hf}.0.SelfAttention")
        rules.append(_norm_rule(ours + ("pre_self_attention_layer_norm",),
                                f"{hf}.0.layer_norm"))
        rules += _attention_rules(ours + ("encoder_decoder_attention",),
                                  f"{hf}.1.EncDecAttention")
        rules.append(_norm_rule(ours + ("pre_cross_attention_layer_norm",),
                                f"{hf}.1.layer_norm"))
        rules += _mlp_rules(cfg, ours + ("mlp",), f"{hf}.2.DenseReluDense")
        rules.append(_norm_rule(ours + ("pre_mlp_layer_norm",), f"{hf}.2.layer_norm"))
  rules.append(_norm_rule(("encoder", "encoder_norm"), "encoder.final_layer_norm"))
  rules.append(_norm_rule(("decoder", "decoder_norm"), "decoder.final_layer_norm"))
  if not cfg.logits_via_embedding:
    rules.append((("decoder", "logits_dense", "kernel"), "lm_head.weight",
                  _transpose, _transpose))
  return rules


def _numpy_dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def expected_param_shapes(cfg: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameter paths and shapes under `cfg`, computed without allocating."""
  return dict(_expected_shapes(cfg))


@functools.lru_cache(maxsize=8)
def _expected_shapes(cfg: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
  shapes = jax.eval_shape(lambda: nn.unbox(t5.init_params(cfg, jax.random.key(0))))
  flat = {}

  def visit(prefix, node):
    for k, v in node.items():
      if isinstance(v, Mapping):
        visit(prefix + (k,), v)
      else:
        flat[prefix + (k,)] = tuple(v.shape)
  visit((), shapes)
  return flat


# Names of tied copies that some writers include and we never need.
_IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$|"
                      r"^decoder\.block\.0\.layer\.1\.EncDecAttention\."
                      r"relative_attention_bias\.weight$")


def load_hf_t5(path: str, *, dtype: str = "auto", param_dtype: str = "float32",
               scan_layers: bool = False) -> tuple[T5Config, dict]:
  """Reads a Hugging Face T5 / Flan-T5 folder into (T5Config, params).

  `params` is a nested dict of numpy arrays in `param_dtype` in our layout,
  ready for `T5(config).apply({'params': params}, ...)` or for sharding;
  with `scan_layers` the config scans its layers and the params are stacked.
  Raises CheckpointMismatchError naming the tensor when one is missing or
  has the wrong shape.
  """
  hf_config, config_path, tensors = hf_files.read_folder(path)
  tied = lm_head_is_tied(tensors)
  try:
    config = config_from_hf(hf_config, dtype=dtype, lm_head_tied=tied).replace(
        param_dtype=param_dtype)
  except KeyError as e:
    raise errors.UserError(f"{config_path}: missing key {e.args[0]!r}") from e
  if (not tied and hf_config.get("tie_word_embeddings") is True
      and "scale_decoder_outputs" not in hf_config):
    log.warning("%s: config.json ties the embeddings but lm_head.weight differs from "
                "shared.weight; loading them untied and scaled as transformers 5 does "
                "(transformers 4 would ignore lm_head.weight)", path)
  tensors = _untied_lm_head(config, hf_config, tensors, tied, source=path)
  params = params_from_hf_tensors(config, tensors, source=path)
  if scan_layers:
    config = config.replace(scan_layers=True)
    params = t5.scan_params(params, config)
  return config, params


def _shared_embedding(tensors: Mapping[str, np.ndarray]) -> np.ndarray | None:
  for name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    if name in tensors:
      return tensors[name]
  return None


def lm_head_is_tied(tensors: Mapping[str, np.ndarray]) -> bool:
  """transformers 5's rule: tied unless `lm_head.weight` is stored and differs."""
  lm_head = tensors.get("lm_head.weight")
  if lm_head is None:
    return True
  shared = _shared_embedding(tensors)
  return (shared is not None and shared.shape == lm_head.shape
          and np.array_equal(shared, lm_head))


def _untied_lm_head(config: T5Config, hf_config: Mapping[str, Any],
                    tensors: Mapping[str, np.ndarray], tied: bool, *,
                    source: str) -> Mapping[str, np.ndarray]:
  """The tensors with `lm_head.weight` as our untied `logits_dense` needs it.

  For the mixed kinds (tied and unscaled, untied and scaled) the scale and
  the tie are folded into one untied matrix; see the module docstring.
  """
  scaled = scales_logits(hf_config)
  if config.logits_via_embedding or not (tied or scaled):
    return tensors
  weight = _shared_embedding(tensors) if tied else tensors["lm_head.weight"]
  if weight is None:
    return tensors  # params_from_hf_tensors names the missing embedding.
  weight = np.asarray(weight, np.float32)
  if scaled:
    weight = weight * np.float32(config.emb_dim ** -0.5)
  log.info("%s: lm_head is %s and %s; loaded as an untied output layer",
           source, "tied" if tied else "untied", "scaled" if scaled else "unscaled")
  return {**tensors, "lm_head.weight": weight}


def params_from_hf_tensors(config: T5Config, tensors: Mapping[str, np.ndarray], *,
                           source: str = "checkpoint") -> dict:
  """Maps a flat HF state dict onto our nested parameter tree, checking shapes."""
  expected = expected_param_shapes(config)
  np_dtype = _numpy_dtype(config.param_dtype)
  params: dict = {}
  used = set()
  for ours, hf_name, to_ours, _ in _rules(config):
    if hf_name not in tensors:
      if hf_name == "shared.weight":
        for alt in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
          if alt in tensors:
            hf_name = alt
            break
    if hf_name not in tensors:
      raise CheckpointMismatchError(
          f"{source}: tensor {hf_name!r} (for {'/'.join(ours)}, shape "
          f"{expected[ours]}) is missing from the checkpoint")
    value = np.asarray(tensors[hf_name])
    used.add(hf_name)
    try:
      converted = to_ours(value, config)
    except ValueError:
      converted = None
    if converted is None or tuple(converted.shape) != expected[ours]:
      raise CheckpointMismatchError(
          f"{source}: tensor {hf_name!r} has shape {tuple(value.shape)}, which does "
          f"not fit {'/'.join(ours)} of shape {expected[ours]} under the config")
    converted = converted.astype(np_dtype)
    node = params
    for key in ours[:-1]:
      node = node.setdefault(key, {})
    node[ours[-1]] = converted
  unused = sorted(n for n in tensors if n not in used and not _IGNORED.match(n)
                  and not (n == "lm_head.weight" and config.logits_via_embedding))
  if unused:
    raise CheckpointMismatchError(
        f"{source}: tensors not used by the config: {unused[:8]}"
        f"{' ...' if len(unused) > 8 else ''}")
  return params


def params_to_hf_tensors(config: T5Config, params: Mapping) -> dict[str, np.ndarray]:
  """Our parameter tree -> a flat HF state dict of numpy arrays."""
  tensors = {}
  for ours, hf_name, _, to_hf in _rules(config):
    node = params
    for key in ours:
      if key not in node:
        raise CheckpointMismatchError(f"params: {'/'.join(ours)} is missing")
      node = node[key]
    value = np.asarray(node)
    tensors[hf_name] = np.ascontiguousarray(to_hf(value, config))
  return tensors


def save_hf_t5(config: T5Config, params: Mapping, path: paths.PathLike, *,
               max_shard_bytes: int = 5 * 2**30, dtype: str | None = None) -> None:
  """Writes a Hugging Face T5 folder (config.json + safetensors) at `path`.

  `params` may hold jax or numpy arrays (unboxed). Weights are written in
  `dtype` ('float32', 'bfloat16'; default: as stored), sharded with an index
  when they exceed `max_shard_bytes`. `path` may be on an object store;
  `config.json` is written last, so a folder that has it is complete.
  """
  # HF has one module per layer: a scanned model is written unscanned.
  config = config.replace(scan_layers=False)
  params = t5.convert_params(params, config)
  tensors = params_to_hf_tensors(config, jax.device_get(params))
  if dtype is not None:
    tensors = {k: v.astype(_numpy_dtype(dtype)) for k, v in tensors.items()}
  path = paths.as_path(path)
  path.mkdir(parents=True, exist_ok=True)
  hf_config = config_to_hf(config)
  hf_config["dtype"] = dtype or str(next(iter(tensors.values())).dtype)
  hf_files.save_tensors(tensors, path, max_shard_bytes=max_shard_bytes)
  paths.write_text(path / "config.json", json.dumps(hf_config, indent=2, sort_keys=True))
