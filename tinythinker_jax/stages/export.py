"""A student as a Hugging Face folder with its tokenizer (`tinythinker export`):
T5 (`T5ForConditionalGeneration`), Llama/Qwen2 or GPT-2 (`AutoModelForCausalLM`).

The folder holds `config.json`, `generation_config.json`, safetensors weights,
and the tokenizer: the SentencePiece model as `spiece.model` with
`tokenizer_config.json` / `special_tokens_map.json` for `T5Tokenizer` (seqio's
extra ids become `<extra_id_N>`), or `ByT5Tokenizer` settings for the byte
vocabulary. A decoder-only student trained here from scratch gets the same
`T5Tokenizer`: transformers' SentencePiece tokenizer that ends a text with EOS,
as this project encodes a decoder-only prompt (`prompt </s>`, then the
completion), so `generate` on the tokenized prompt continues as the student
does. A student whose vocabulary is a pretrained tokenizer (`hf_tokenizer`) gets that tokenizer's `tokenizer.json` and its embedding rows
back in the tokenizer's own id order. `transformers` loads it with
`from_pretrained`. Both folders may
be on an object store (`gs://`, through `paths`): there, where a folder cannot
be renamed atomically, the files are written in place with `config.json` last.
"""

from __future__ import annotations

import json
from typing import Optional

import jax

from tinythinker_jax import errors, partitioning, paths, weights
from tinythinker_jax.tokenizers import hf_tokenizer, vocabularies

SPIECE = "spiece.model"


def _write_json(path: paths.PathLike, value) -> None:
  paths.write_text(path, json.dumps(value, indent=2, sort_keys=True))


def write_tokenizer(vocabulary: str, output_dir: paths.PathLike,
                    extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
                    model_max_length: int = 512) -> None:
  special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
  if vocabulary == vocabularies.BYTE:
    config = dict(special, tokenizer_class="ByT5Tokenizer", extra_ids=extra_ids)
  else:
    try:
      model = paths.as_path(vocabulary).read_bytes()
    except FileNotFoundError:
      raise errors.MissingFileError(f"vocabulary {vocabulary!r} not found") from None
    paths.write_bytes(paths.as_path(output_dir) / SPIECE, model)
    config = dict(special, tokenizer_class="T5Tokenizer", extra_ids=extra_ids,
                  legacy=False, model_max_length=model_max_length)
    special = dict(special, additional_special_tokens=[
        f"<extra_id_{i}>" for i in range(extra_ids)])
  _write_json(paths.as_path(output_dir) / "tokenizer_config.json", config)
  _write_json(paths.as_path(output_dir) / "special_tokens_map.json", special)


def export_student(model_dir: paths.PathLike, output_dir: paths.PathLike, *,
                   vocabulary: str = "", dtype: Optional[str] = None) -> str:
  """Writes `model_dir`'s latest checkpoint as a Hugging Face folder of its family."""
  # Restored onto this host's devices by the partitioning rules, then written
  # one tensor at a time: no device holds the whole model.
  mesh = partitioning.create_mesh(devices=jax.local_devices())
  loaded = weights.load(model_dir, vocabulary=vocabulary,
                        partitioner=partitioning.Partitioner(mesh))
  output_dir = paths.as_path(output_dir)
  remote = paths.is_remote(output_dir)
  tmp = output_dir if remote else output_dir.parent / (output_dir.name + ".tmp")
  paths.remove(tmp)
  tmp.mkdir(parents=True, exist_ok=True)
  model, params = loaded.model, loaded.params
  if hf_tokenizer.is_hf_tokenizer(loaded.vocabulary):
    codec = vocabularies.load_pretrained(loaded.vocabulary)
    codec.save(tmp)
    _write_json(tmp / "generation_config.json", {
        "eos_token_id": codec.hf_eos_id, "pad_token_id": codec.exported_pad_id})
    model, params = model.map_vocabulary_rows(params, codec.to_hf_rows)
  else:
    # seqio's ids: pad 0, EOS 1; an encoder-decoder also starts decoding at 0.
    generation = {"eos_token_id": 1, "pad_token_id": 0}
    if model.family == "encoder_decoder":
      generation["decoder_start_token_id"] = 0
    _write_json(tmp / "generation_config.json", generation)
    write_tokenizer(loaded.vocabulary, tmp)
  model.save_hf(params, str(tmp), dtype=dtype)  # config.json last
  if not remote:
    paths.remove(output_dir)
    tmp.replace(output_dir)  # A complete folder or none.
  return str(output_dir)
