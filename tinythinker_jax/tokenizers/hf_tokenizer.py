"""A pretrained model's own tokenizer, in this project's id space.

Sources: a Hugging Face `tokenizer.json` (or the folder holding it, with its
`tokenizer_config.json` naming the special tokens and the chat template), or a
GGUF file, whose metadata holds the tokenizer (llama.cpp's `tokenizer.ggml.*`
keys: byte-level BPE vocabularies and merges, the pre-tokenizer by name). Both
are read through the `tokenizers` library; nothing is downloaded.

Ids. Everything downstream of a vocabulary (the materialised arrays, the loss
masks, T5's and the decoder-only models' padding, decoding's stop) takes
T5's conventions: id 0 is padding and never a real token, id 1 is EOS. A
pretrained tokenizer has its own ids (SmolLM2: `<|endoftext|>` 0, `<|im_start|>`
1, `<|im_end|>` 2, the EOS of its instruct model; GPT-2 and Qwen2: "!" is 0), so
the project's id of a token is its tokenizer id with two swaps:

- id 0 <-> the padding token: the tokenizer's own pad token when it is a special
  token other than EOS and BOS; else the first special token that is neither
  and does not occur in the chat template; else (GPT-2, whose one special token
  is EOS) a new `<pad>` token appended after the vocabulary (its embedding row
  starts at zero);
- id 1 <-> EOS.

`hf_ids[i]` is the tokenizer id of project id `i` (-1 for an appended pad).
Weights move between the two orders with `to_project_rows`/`to_hf_rows`:
`weights.load` applies the first when it reads a Hugging Face folder or a GGUF
file with such a vocabulary, export the second, so an exported folder holds the
tokenizer's own order again.

Text is encoded as data: special-token strings in a question ("<|im_end|>")
are split into ordinary pieces, never read as control tokens, and no BOS is
added (SmolLM2 and GPT-2 add none; a Llama 3 student would see its prompts
without `<|begin_of_text|>`, a deviation named in the README).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Optional, Sequence

import numpy as np

from tinythinker_jax import errors, paths

# GGUF `tokenizer.ggml.pre` -> (split regex or None, individual digits): the
# pre-tokenizers llama.cpp names, as their tokenizer.json files define them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS = {
    "default": (None, False), "gpt-2": (None, False), "gpt2": (None, False),
    "smollm": (None, True),
    "llama-bpe": (_LLAMA3_SPLIT, False), "llama3": (_LLAMA3_SPLIT, False),
    "qwen2": (_QWEN2_SPLIT, False),
}
# GGUF token types (llama.cpp's llama_token_type): control and user-defined
# tokens are atomic added tokens.
_CONTROL, _USER_DEFINED = 3, 4

PAD_PIECE = "<pad>"


def is_hf_tokenizer(path_or_kind: str) -> bool:
  """Whether a vocabulary setting names a pretrained tokenizer: a `.json`
  tokenizer file, a `.gguf` file, or a folder holding `tokenizer.json`."""
  if not path_or_kind or path_or_kind == "byte":
    return False
  if path_or_kind.endswith((".json", ".gguf")):
    return True
  path = paths.as_path(path_or_kind)
  return path.is_dir() and (path / "tokenizer.json").exists()


def _require_tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.UserError("a pretrained tokenizer needs the tokenizers package: pip "
                           "install tokenizers") from e
  return tokenizers


def _token_content(token: Any) -> Optional[str]:
  if isinstance(token, dict):
    return token.get("content")
  return token


class HFTokenizer:
  """Text <-> project ids with a pretrained tokenizer; see the module docstring.

  The interface of `vocabularies.TextCodec` (`encode`, `decode`, `vocab_size`,
  `pad_id`, `eos_id`), so sampling and evaluation take either.
  """

  pad_id = 0
  eos_id = 1
  extra_ids = 0

  def __init__(self, path: str):
    self.path = path
    if path.endswith(".gguf"):
      self._tokenizer, special = _from_gguf(path)
    else:
      self._tokenizer, special = _from_json(path)
    self._tokenizer.encode_special_tokens = True  # Text is data, not control tokens.
    self.hf_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self.chat_template: Optional[str] = special.get("chat_template")
    eos = special.get("eos")
    if eos is None:
      raise errors.UserError(f"{path}: the tokenizer names no EOS token (tokenizer_config."
                             "json's eos_token or GGUF's tokenizer.ggml.eos_token_id)")
    self.hf_eos_id = int(eos)
    self.hf_bos_id = special.get("bos")
    self.special_ids = sorted(special["special_ids"])
    self.hf_pad_id = self._choose_pad(special.get("pad"))
    order = list(range(self.hf_vocab_size)) + ([-1] if self.hf_pad_id == -1 else [])
    for project, hf in ((0, self.hf_pad_id), (1, self.hf_eos_id)):
      at = order.index(hf)
      order[project], order[at] = order[at], order[project]
    self.hf_ids = np.asarray(order, np.int64)
    self.project_ids = np.zeros(self.hf_vocab_size, np.int64)
    real = self.hf_ids >= 0
    self.project_ids[self.hf_ids[real]] = np.nonzero(real)[0]

  def _choose_pad(self, pad: Optional[int]) -> int:
    taken = {self.hf_eos_id, self.hf_bos_id}
    if pad is not None and pad in self.special_ids and pad not in taken:
      return int(pad)
    for token in self.special_ids:
      content = self._tokenizer.id_to_token(token) or ""
      if token not in taken and not (self.chat_template and content in self.chat_template):
        return int(token)
    return -1

  @property
  def vocab_size(self) -> int:
    """Project ids in use (the tokenizer's, plus an appended pad)."""
    return len(self.hf_ids)

  @property
  def base_size(self) -> int:
    return self.vocab_size

  @property
  def exported_pad_id(self) -> int:
    """The pad id an exported folder names: the tokenizer's, or EOS where the pad
    was appended (its row is not exported)."""
    return self.hf_pad_id if self.hf_pad_id >= 0 else self.hf_eos_id

  def piece(self, project_id: int) -> str:
    hf = int(self.hf_ids[project_id])
    return PAD_PIECE if hf < 0 else self._tokenizer.id_to_token(hf)

  def encode(self, text: str) -> list[int]:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    return [int(i) for i in self.project_ids[np.asarray(ids, np.int64)]] if ids else []

  def decode(self, ids: Sequence[int]) -> str:
    """Text up to the first EOS; padding, special tokens and ids beyond the
    vocabulary (an embedding table's rounding) are dropped."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    hf = [int(self.hf_ids[i]) for i in ids if 0 < i < self.vocab_size]
    return self._tokenizer.decode([i for i in hf if i >= 0], skip_special_tokens=True)

  def chat_wrapping(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The project ids the chat template puts before and after one user message
    (with the generation prompt), rendered by jinja2 as transformers renders it;
    control tokens in the template are read as control tokens."""
    if not self.chat_template:
      raise errors.UserError(f"{self.path}: the tokenizer has no chat template "
                             "(tokenizer_config.json's chat_template or GGUF's "
                             "tokenizer.chat_template); set CHAT_TEMPLATE = False")
    import jinja2.sandbox  # pylint: disable=import-outside-toplevel
    marker = "\ue000MESSAGE\ue000"

    def raise_exception(message):
      raise errors.UserError(f"{self.path}: the chat template raised: {message}")

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    name = self._tokenizer.id_to_token
    text = env.from_string(self.chat_template).render(
        messages=[{"role": "user", "content": marker}], add_generation_prompt=True,
        eos_token=name(self.hf_eos_id),
        bos_token=name(int(self.hf_bos_id)) if self.hf_bos_id is not None else "")
    if text.count(marker) != 1:
      raise errors.UserError(f"{self.path}: the chat template does not place the message "
                             "exactly once")
    before, after = text.split(marker)
    # The template's own control tokens are control tokens: a copy reads them so,
    # leaving the shared tokenizer (which tf.data may be using) as it is.
    template_reader = type(self._tokenizer).from_str(self._tokenizer.to_str())
    template_reader.encode_special_tokens = False
    wrap = [tuple(int(self.project_ids[i]) for i in
                  template_reader.encode(part, add_special_tokens=False).ids)
            for part in (before, after)]
    return wrap[0], wrap[1]

  # Weights: rows of an embedding (or output) matrix in either order.
  def to_project_rows(self, rows: np.ndarray, num_rows: Optional[int] = None) -> np.ndarray:
    """`rows [hf_vocab, ...]` (a checkpoint's order) -> `[num_rows, ...]` in project
    order; rows past the tokenizer's (an appended pad, table rounding) are zero."""
    num_rows = num_rows or rows.shape[0]
    if rows.shape[0] < self.hf_vocab_size or num_rows < self.vocab_size:
      raise errors.UserError(
          f"{self.path}: the tokenizer has {self.hf_vocab_size} tokens "
          f"(+{self.vocab_size - self.hf_vocab_size} appended pad) but the weights have "
          f"{rows.shape[0]} embedding rows and the model {num_rows}; set NUM_EMBEDDINGS "
          f"to at least {self.vocab_size}")
    out = np.zeros((num_rows,) + rows.shape[1:], rows.dtype)
    real = self.hf_ids >= 0
    out[np.nonzero(real)[0]] = rows[self.hf_ids[real]]
    # The checkpoint's own rounding rows (no token's), after ours where they fit.
    extra = np.arange(self.hf_vocab_size, rows.shape[0])
    extra = extra[self.vocab_size + extra - self.hf_vocab_size < num_rows]
    if len(extra):
      out[self.vocab_size + extra - self.hf_vocab_size] = rows[extra]
    return out

  def to_hf_rows(self, rows: np.ndarray, num_rows: Optional[int] = None) -> np.ndarray:
    """The inverse: project-order rows -> the tokenizer's order, `num_rows` of
    them (default: the tokenizer's size; an appended pad's row is dropped)."""
    num_rows = num_rows or self.hf_vocab_size
    out = np.zeros((num_rows,) + rows.shape[1:], rows.dtype)
    real = self.hf_ids >= 0
    out[self.hf_ids[real]] = rows[np.nonzero(real)[0]]
    extra = np.arange(self.hf_vocab_size, num_rows)
    if len(extra):
      out[extra] = rows[self.vocab_size + extra - self.hf_vocab_size]
    return out

  def save(self, directory: paths.PathLike) -> None:
    """`tokenizer.json` and `tokenizer_config.json` (special tokens, chat
    template) into an exported folder, in the tokenizer's own ids."""
    directory = paths.as_path(directory)
    paths.write_text(directory / "tokenizer.json", self._tokenizer.to_str())
    name = self._tokenizer.id_to_token
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "eos_token": name(self.hf_eos_id),
              "pad_token": name(self.exported_pad_id),
              "add_bos_token": False}
    if self.hf_bos_id is not None:
      config["bos_token"] = name(int(self.hf_bos_id))
    if self.chat_template:
      config["chat_template"] = self.chat_template
    paths.write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2))

  def to_json(self) -> dict[str, Any]:
    return {"path": self.path, "hf_vocab_size": self.hf_vocab_size,
            "eos": self.piece(1), "pad": self.piece(0)}


def _from_json(path: str):
  tokenizers = _require_tokenizers()
  file = paths.as_path(path)
  if file.is_dir():
    file = file / "tokenizer.json"
  if not file.exists():
    raise errors.MissingFileError(f"{file}: tokenizer file not found")
  try:
    tokenizer = tokenizers.Tokenizer.from_str(file.read_text())
  except Exception as e:  # tokenizers raises its own Exception subclass.
    raise errors.UserError(f"{file}: not a tokenizers tokenizer.json: {e}") from e
  folder = file.parent
  config = {}
  if (folder / "tokenizer_config.json").exists():
    config = paths.read_json(folder / "tokenizer_config.json")
  model_config = {}
  for name in ("generation_config.json", "config.json"):
    if (folder / name).exists():
      model_config = {**paths.read_json(folder / name), **model_config}

  def special_id(key: str) -> Optional[int]:
    content = _token_content(config.get(key))
    if content is not None:
      token = tokenizer.token_to_id(content)
      if token is None:
        raise errors.UserError(f"{folder / 'tokenizer_config.json'}: {key}={content!r} is "
                               f"not a token of {file}")
      return token
    value = model_config.get(f"{key}_id")
    if isinstance(value, list):
      value = value[0] if value else None
    return value

  special_ids = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
  template = config.get("chat_template")
  if template is None and (folder / "chat_template.jinja").exists():  # Newer folders.
    template = (folder / "chat_template.jinja").read_text()
  if isinstance(template, list):  # Named templates: the default one.
    template = next((t.get("template") for t in template if t.get("name") == "default"), None)
  return tokenizer, {"eos": special_id("eos_token"), "bos": special_id("bos_token"),
                     "pad": special_id("pad_token"), "special_ids": special_ids,
                     "chat_template": template}


def _from_gguf(path: str):
  tokenizers = _require_tokenizers()
  from tinythinker_jax.convert import gguf_llama  # pylint: disable=import-outside-toplevel
  _, reader = gguf_llama.open_reader(path)

  def field(key: str, default: Any = gguf_llama.REQUIRED):
    return gguf_llama.field(reader, key, path, default)

  model = field("tokenizer.ggml.model")
  if model != "gpt2":
    raise errors.UserError(
        f"{path}: tokenizer.ggml.model={model!r}; tokenizers are read from GGUF metadata "
        "for byte-level BPE ('gpt2') only: give the model's tokenizer.json as the "
        "vocabulary instead")
  pre = field("tokenizer.ggml.pre", "default")
  if pre not in GGUF_PRE_TOKENIZERS:
    raise errors.UserError(
        f"{path}: tokenizer.ggml.pre={pre!r} is not a pre-tokenizer this reader knows "
        f"({', '.join(sorted(GGUF_PRE_TOKENIZERS))}); give the model's tokenizer.json as "
        "the vocabulary instead")
  tokens = field("tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
  types = field("tokenizer.ggml.token_type", [1] * len(tokens))
  vocab = {t: i for i, t in enumerate(tokens)}
  bpe = tokenizers.models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                              byte_fallback=False)
  tokenizer = tokenizers.Tokenizer(bpe)
  split, digits = GGUF_PRE_TOKENIZERS[pre]
  steps = []
  if digits:
    steps.append(tokenizers.pre_tokenizers.Digits(individual_digits=True))
  if split:
    steps.append(tokenizers.pre_tokenizers.Split(tokenizers.Regex(split), "isolated"))
  steps.append(tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                   use_regex=split is None))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(steps)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  specials = [i for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)]
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(tokens[i], special=types[i] == _CONTROL, normalized=False)
      for i in specials])

  def special(key: str) -> Optional[int]:
    value = field(f"tokenizer.ggml.{key}_token_id", None)
    return None if value is None else int(value)

  return tokenizer, {"eos": special("eos"), "bos": special("bos"), "pad": special("padding"),
                     "special_ids": {i for i in specials if types[i] == _CONTROL},
                     "chat_template": field("tokenizer.chat_template", None)}
