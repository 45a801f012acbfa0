"""`tinythinker export`: a student as a Hugging Face folder of its family (T5,
Llama/Qwen2, GPT-2) with its tokenizer (`stages.export.export_student`)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence
from tinythinker_jax import gin_utils
from tinythinker_jax.stages.export import export_student

def _add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model_dir", required=True, help="one of our model dirs")
  p.add_argument("--output_dir", required=True, help="the Hugging Face folder to write")
  p.add_argument("--vocabulary", default="", help="default: the checkpoint's own")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="weights dtype (default: as stored)")


def _export(args: argparse.Namespace, bindings: list[str]) -> int:
  gin_utils.parse_flags(args, bindings)
  path = export_student(args.model_dir, args.output_dir, vocabulary=args.vocabulary,
                        dtype=args.dtype)
  print(f"wrote {path}: load it with transformers' AutoTokenizer and "
        f"AutoModelForSeq2SeqLM (T5) or AutoModelForCausalLM (Llama, GPT-2)"
        f".from_pretrained({path!r})")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return gin_utils.run("tinythinker export", _add_flags, _export, argv,
                       "write a student as a Hugging Face folder of its family "
                       "(safetensors, config, tokenizer)")


if __name__ == "__main__":
  gin_utils.run_as_module(__spec__)
