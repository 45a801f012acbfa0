"""Vocabularies: seqio SentencePiece, byte or pretrained-tokenizer vocabularies,
and training new ones.

T5's conventions: pad = 0, eos = 1, unk = 2, no bos; seqio appends
`extra_ids` sentinel tokens (`<extra_id_0>`, ...) after the SentencePiece
pieces. Model embedding tables are rounded up to a multiple of 128, as
T5's 32100-token vocabulary sits in a 32128-row table.

A pretrained model's own tokenizer (`tokenizer.json`, its folder, or a GGUF
file) is a vocabulary too, with its ids remapped to pad 0 / EOS 1
(`hf_tokenizer`); `text_codec` and `get_vocabulary` take any of them.

seqio (and so TensorFlow) is imported only when a seqio vocabulary is built;
`train_sentencepiece` needs only the `sentencepiece` package.
"""

from __future__ import annotations

import functools
import io
import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from tinythinker_jax import errors, paths, tf_import
from tinythinker_jax.tokenizers import hf_tokenizer
from tinythinker_jax.data import schema

BYTE = "byte"
DEFAULT_EXTRA_IDS = 100
# T5's own SentencePiece model (t5x's default vocabulary), used when none is given.
T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


def get_vocabulary(path_or_kind: str, extra_ids: int = DEFAULT_EXTRA_IDS):
  """A seqio vocabulary: `'byte'` for ByteVocabulary, a pretrained tokenizer
  (`hf_tokenizer.is_hf_tokenizer`: no extra ids), else a SentencePiece model.

  `path_or_kind` may be a local path or an object-store path (`gs://`, read
  through `etils.epath` into a local copy that seqio then loads).
  """
  seqio, _ = tf_import.import_seqio()
  if path_or_kind == BYTE:
    return seqio.ByteVocabulary(extra_ids=extra_ids)
  if hf_tokenizer.is_hf_tokenizer(path_or_kind):
    return _pretrained_vocabulary_class()(path_or_kind)
  if not paths.as_path(path_or_kind).exists():
    raise errors.MissingFileError(f"SentencePiece model {path_or_kind!r} not found")
  return seqio.SentencePieceVocabulary(paths.local_copy(path_or_kind), extra_ids=extra_ids)


@functools.lru_cache(maxsize=None)
def _pretrained_vocabulary_class():
  seqio, tf = tf_import.import_seqio()

  class PretrainedVocabulary(seqio.Vocabulary):
    """A pretrained tokenizer as a seqio vocabulary, in the project's ids (pad 0,
    EOS 1; `hf_tokenizer`). TensorFlow calls the `tokenizers` library through
    `tf.numpy_function`, so tasks tokenize it inside tf.data."""

    def __init__(self, path: str):
      self.path = path
      super().__init__(extra_ids=0)

    @property
    def codec(self) -> hf_tokenizer.HFTokenizer:
      return load_pretrained(self.path)

    @property
    def eos_id(self) -> int:
      return self.codec.eos_id

    @property
    def unk_id(self):
      return None

    @property
    def _base_vocab_size(self) -> int:
      return self.codec.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
      return self.codec.encode(s)

    def _decode(self, ids) -> str:
      return self.codec.decode([int(i) for i in ids])

    def _encode_tf(self, s):
      def encode(text):
        text = text.item() if isinstance(text, np.ndarray) else text
        return np.asarray(self.codec.encode(text.decode("utf-8")), np.int32)
      ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids

    def _decode_tf(self, ids):
      def decode(row):
        return self.codec.decode(row.tolist()).encode("utf-8")
      texts = tf.map_fn(
          lambda row: tf.numpy_function(decode, [row], tf.string, stateful=False),
          tf.reshape(ids, [-1, tf.shape(ids)[-1]]),
          fn_output_signature=tf.TensorSpec([], tf.string))
      return tf.reshape(texts, tf.shape(ids)[:-1])

    def __eq__(self, other):
      return isinstance(other, PretrainedVocabulary) and other.path == self.path

    def __hash__(self):
      return hash(self.path)

  return PretrainedVocabulary


@functools.lru_cache(maxsize=8)
def load_pretrained(path: str) -> hf_tokenizer.HFTokenizer:
  """A pretrained tokenizer, read once per process (a GGUF's takes seconds)."""
  return hf_tokenizer.HFTokenizer(path)


def text_codec(path_or_kind: str, extra_ids: int = DEFAULT_EXTRA_IDS):
  """Text <-> ids without TensorFlow for any vocabulary setting: a `TextCodec`,
  or the pretrained tokenizer a tokenizer.json, its folder or a GGUF names."""
  if hf_tokenizer.is_hf_tokenizer(path_or_kind):
    return load_pretrained(path_or_kind)
  return TextCodec(path_or_kind, extra_ids)


def token_table(path_or_kind: str, extra_ids: int = DEFAULT_EXTRA_IDS) -> list[str]:
  """Every project id's token string, in id order: what two vocabulary settings
  must share for one model's distribution to be read by another."""
  codec = text_codec(path_or_kind, extra_ids)
  if isinstance(codec, hf_tokenizer.HFTokenizer):
    return [codec.piece(i) for i in range(codec.vocab_size)]
  if codec._sp is None:  # pylint: disable=protected-access
    base = ["<pad>", "</s>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
  else:
    sp = codec._sp  # pylint: disable=protected-access
    base = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  return base + [f"<extra_id_{i}>" for i in range(codec.extra_ids)]


def check_same_tokenizer(teacher: str, student: str, binding: str) -> int:
  """The shared tokenizer's number of ids; a clear error unless `teacher`'s
  vocabulary gives every id the same token as `student`'s (a distribution
  over one tokenizer's ids means nothing over another's)."""
  if not teacher:
    raise errors.UserError(f"{binding}: the teacher names no tokenizer (no tokenizer.json, "
                           "spiece.model or recorded vocabulary), so it cannot be checked "
                           "against the student's")
  ours, theirs = token_table(student), token_table(teacher)
  if ours == theirs:
    return len(ours)
  where = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
  detail = (f"id {where} is {theirs[where]!r} for the teacher and {ours[where]!r} for the "
            f"student" if where is not None else
            f"the teacher has {len(theirs)} ids and the student {len(ours)}")
  raise errors.UserError(f"{binding}: the teacher's tokenizer ({teacher}) is not the "
                         f"student's ({student}): {detail}. Distillation from a "
                         "distribution needs one tokenizer; train on the teacher's text "
                         "instead (sequence-level distillation, Fine-tune-CoT)")


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """The embedding-table size for a vocabulary: rounded up to `multiple`."""
  return -(-vocab_size // multiple) * multiple


def _strings_from_json(value) -> Iterator[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _strings_from_json(v)
  elif isinstance(value, list):
    for v in value:
      yield from _strings_from_json(v)


def iter_text(files: Sequence[str]) -> Iterator[str]:
  """Lines of text from plain-text, JSON-lines and JSON files.

  JSON(L) files contribute every string value they contain, so rationale
  records and dataset files can be used directly.
  """
  for path in files:
    if path.endswith(".jsonl"):
      for _, record in paths.iter_jsonl(path):
        yield from _strings_from_json(record)
    elif path.endswith(".json"):
      try:
        data = json.loads(paths.as_path(path).read_text())
      except json.JSONDecodeError as e:
        raise errors.UserError(f"{path}: invalid JSON: {e}") from e
      yield from _strings_from_json(data)
    else:
      yield from paths.as_path(path).read_text().split("\n")


def iter_rendered(files: Sequence[str], fmt: str) -> Iterator[str]:
  """The student's inputs and targets rendered from rationale records in `fmt`
  (every stage of a staged format): a vocabulary trained on these covers the
  format's own words ("Recall:", "So the answer is option B.")."""
  from tinythinker_jax.reasoning import formats  # pylint: disable=import-outside-toplevel
  fmt_enum = formats.Format(fmt)
  stages = formats.STAGES_OF.get(fmt_enum, (None,))
  for path in files:
    for record in schema.read_records(path, schema.RationaleRecord):
      for stage in stages:
        for pair in formats.render_record(record, fmt_enum, stage):
          yield pair["inputs"]
          yield pair["targets"]


def train_sentencepiece(texts: Iterable[str], vocab_size: int,
                        output_prefix: paths.PathLike, *,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        max_sentences: int = 2_000_000, seed: int = 0,
                        hard_vocab_limit: bool = True) -> str:
  """Trains a SentencePiece model with T5's special ids; returns the .model path.

  Pieces: pad 0, eos 1, unk 2, no bos. Writes `<prefix>.model` and
  `<prefix>.vocab`. With `hard_vocab_limit=False`, `vocab_size` is an upper
  bound (a small closed-vocabulary corpus may support fewer pieces).
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sentences = []
  for text in texts:
    for line in text.splitlines():
      line = line.strip()
      if line:
        sentences.append(line)
      if len(sentences) >= max_sentences:
        break
  if not sentences:
    raise errors.UserError("no text to train a vocabulary on")
  output_prefix = paths.absolute(output_prefix)
  output_prefix.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        input_sentence_size=max_sentences, shuffle_input_sentence=True,
        hard_vocab_limit=hard_vocab_limit,
        num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    if "Vocabulary size" in str(e) or "vocab_size" in str(e):
      raise errors.UserError(f"vocabulary size {vocab_size} does not fit this text: {e}. "
                       "Use a smaller --size.") from e
    raise
  path = output_prefix.parent / (output_prefix.name + ".model")
  paths.write_bytes(path, model.getvalue())
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  paths.write_text(output_prefix.parent / (output_prefix.name + ".vocab"), "".join(
      f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
      for i in range(processor.get_piece_size())))
  return str(path)


class TextCodec:
  """Text <-> ids without TensorFlow, as seqio's vocabularies do it.

  For a SentencePiece model: ids are the pieces' ids, seqio's extra ids sit
  above them and decode to nothing. For `'byte'`: ids are bytes + 3 (pad 0,
  eos 1, unk 2), as `seqio.ByteVocabulary`. Decoding stops at EOS. Sampling and
  evaluation use this, so hosts without TensorFlow (GPU machines) can run them.
  """

  pad_id = 0
  eos_id = 1
  unk_id = 2

  def __init__(self, path_or_kind: str, extra_ids: int = DEFAULT_EXTRA_IDS):
    self.path = path_or_kind
    self.extra_ids = extra_ids
    if path_or_kind == BYTE:
      self._sp = None
      self.base_size = 256 + 3
    else:
      import sentencepiece as spm  # pylint: disable=import-outside-toplevel
      try:  # A local file or an object (gs://), read as bytes: no TensorFlow needed.
        proto = paths.as_path(path_or_kind).read_bytes()
      except FileNotFoundError:
        raise errors.MissingFileError(
            f"SentencePiece model {path_or_kind!r} not found") from None
      self._sp = spm.SentencePieceProcessor(model_proto=proto)
      self.base_size = self._sp.get_piece_size()

  @property
  def vocab_size(self) -> int:
    return self.base_size + self.extra_ids

  def encode(self, text: str) -> list[int]:
    if self._sp is None:
      return [b + 3 for b in text.encode("utf-8")]
    return list(self._sp.encode_as_ids(text))

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    ids = [i for i in ids if 2 < i < self.base_size or i == self.unk_id]
    if self._sp is None:
      return bytes(i - 3 for i in ids if i != self.unk_id).decode("utf-8", "replace")
    return self._sp.decode_ids(ids)
