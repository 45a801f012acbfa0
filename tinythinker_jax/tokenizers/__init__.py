"""The tokenizer wing: `vocabularies` (seqio vocabularies, T5's SentencePiece
conventions and training, text codecs without TensorFlow, token tables and the
same-tokenizer check) and `hf_tokenizer` (a pretrained model's tokenizer from
tokenizer.json or a GGUF file, its ids remapped to pad 0 / EOS 1)."""
