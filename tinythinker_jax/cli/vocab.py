"""`tinythinker vocab`: a SentencePiece vocabulary with T5's conventions.

pad=0, eos=1, unk=2 (seqio's), trained on text files or on rationale records
rendered in a student format; prints the `NUM_EMBEDDINGS` the vocabulary needs
once seqio appends its sentinels.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from tinythinker_jax import gin_utils
from tinythinker_jax.tokenizers import vocabularies


def _add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--input", action="append", required=True,
                 help="text, .json or .jsonl files (repeatable or comma-separated)")
  p.add_argument("--size", type=int, required=True, help="number of pieces")
  p.add_argument("--output", required=True, help="output prefix: PREFIX.model/.vocab")
  p.add_argument("--model_type", default="unigram",
                 choices=["unigram", "bpe", "char", "word"])
  p.add_argument("--character_coverage", type=float, default=1.0)
  p.add_argument("--format", default="",
                 help="train on rationale records rendered in this student format "
                 "(e.g. tinythinker, finetune_cot) instead of their raw strings")
  p.add_argument("--extra_ids", type=int, default=100,
                 help="sentinels seqio appends (for the NUM_EMBEDDINGS hint)")
  p.add_argument("--seed", type=int, default=0)


def _vocab(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings, devices=False)
  files = [f for spec in args.input for f in spec.split(",") if f]
  texts = (vocabularies.iter_rendered(files, args.format) if args.format else
           vocabularies.iter_text(files))
  path = vocabularies.train_sentencepiece(
      texts, args.size, args.output, model_type=args.model_type,
      character_coverage=args.character_coverage, seed=args.seed)
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  pieces = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  total = pieces + args.extra_ids
  print(f"wrote {path} ({pieces} pieces; pad=0 eos=1 unk=2)")
  print(f"with {args.extra_ids} extra ids the vocabulary has {total} tokens; "
        f"set NUM_EMBEDDINGS = {vocabularies.padded_vocab_size(total)}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker vocab", _add_flags, _vocab, argv,
                       "train a SentencePiece vocabulary with T5's conventions")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
