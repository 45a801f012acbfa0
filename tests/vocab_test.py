"""Vocabularies: SentencePiece training with T5's conventions, seqio wrappers."""

import subprocess
import sys

import pytest

from tinythinker_jax.tokenizers import vocabularies


def test_vocab_cli_trains_t5_style_sentencepiece(tmp_path, shared_data):
  csqa = shared_data / "tinythinker" / "csqa" / "dev_rand_split.jsonl"
  prefix = tmp_path / "csqa_spm"
  result = subprocess.run(
      [sys.executable, "-m", "tinythinker_jax.cli.vocab", f"--input={csqa}", "--size=500",
       f"--output={prefix}"], capture_output=True, text=True, check=True)
  assert "set NUM_EMBEDDINGS = 640" in result.stdout  # 500 + 100 extra ids -> 640.
  vocab = vocabularies.get_vocabulary(str(prefix) + ".model")
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.vocab_size == 600
  pieces = vocab.tokenizer
  assert [pieces.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
  assert pieces.bos_id() == -1
  text = "Where would you find a jellyfish that has not been captured?"
  assert vocab.decode(vocab.encode(text)) == text
  # seqio's sentinels sit after the 500 pieces, counting down from the top id.
  assert vocab.decode([599]) == "<extra_id_0>"
  assert vocab.decode([500]) == "<extra_id_99>"
  assert (prefix.parent / "csqa_spm.vocab").read_text().startswith("<pad>\t")


def test_byte_vocabulary():
  vocab = vocabularies.get_vocabulary("byte")
  assert vocab.vocab_size == 256 + 3 + 100
  assert vocab.decode(vocab.encode("héllo")) == "héllo"


def test_missing_model_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocabularies.get_vocabulary(str(tmp_path / "nope.model"))


def test_too_large_vocabulary_says_so(tmp_path):
  with pytest.raises(ValueError, match="does not fit this text"):
    vocabularies.train_sentencepiece(["a b c", "a b"], 5000, str(tmp_path / "x"))


def test_iter_text_names_bad_json_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"a": "ok"}\n{"a": \n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2"):
    list(vocabularies.iter_text([str(path)]))


def test_padded_vocab_size():
  assert vocabularies.padded_vocab_size(32100) == 32128
  assert vocabularies.padded_vocab_size(128) == 128
