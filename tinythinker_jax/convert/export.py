"""`tinythinker export`: a student as a Hugging Face T5 folder with its tokenizer.

The folder holds `config.json`, `generation_config.json`, safetensors weights,
and the tokenizer: the SentencePiece model as `spiece.model` with
`tokenizer_config.json` / `special_tokens_map.json` for `T5Tokenizer` (seqio's
extra ids become `<extra_id_N>`), or `ByT5Tokenizer` settings for the byte
vocabulary. `transformers` loads it with `from_pretrained`, and a gs:// vocabulary
is copied through TensorFlow's gfile.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from tinythinker_jax import vocabularies
from tinythinker_jax.convert.hf import save_hf_t5

SPIECE = "spiece.model"


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


def write_tokenizer(vocabulary: str, output_dir: str,
                    extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
                    model_max_length: int = 512) -> None:
  special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
  if vocabulary == vocabularies.BYTE:
    config = dict(special, tokenizer_class="ByT5Tokenizer", extra_ids=extra_ids)
  else:
    target = os.path.join(output_dir, SPIECE)
    if vocabulary.startswith("gs://"):
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      tf.io.gfile.copy(vocabulary, target, overwrite=True)
    else:
      if not os.path.exists(vocabulary):
        raise FileNotFoundError(f"vocabulary {vocabulary!r} not found")
      shutil.copyfile(vocabulary, target)
    config = dict(special, tokenizer_class="T5Tokenizer", extra_ids=extra_ids,
                  legacy=False, model_max_length=model_max_length)
    special = dict(special, additional_special_tokens=[
        f"<extra_id_{i}>" for i in range(extra_ids)])
  _write_json(os.path.join(output_dir, "tokenizer_config.json"), config)
  _write_json(os.path.join(output_dir, "special_tokens_map.json"), special)


def export_student(model_dir: str, output_dir: str, *, vocabulary: str = "",
                   dtype: Optional[str] = None) -> str:
  """Writes `model_dir`'s latest checkpoint as a Hugging Face T5 folder."""
  from tinythinker_jax import student  # pylint: disable=import-outside-toplevel
  loaded = student.load(model_dir, vocabulary=vocabulary)
  tmp = output_dir.rstrip("/") + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  save_hf_t5(loaded.config, loaded.params, tmp, dtype=dtype)
  _write_json(os.path.join(tmp, "generation_config.json"),
              {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0})
  write_tokenizer(loaded.vocabulary, tmp)
  if os.path.exists(output_dir):
    shutil.rmtree(output_dir)
  os.replace(tmp, output_dir)  # A complete folder or none.
  return output_dir
