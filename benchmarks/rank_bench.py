"""Rank classification of multiple-choice questions: every option scored with its
prompt repeated (`Student.score`, the path before issue #33's change) against the
prompt read once for all its options (`Student.score_options`, a KV cache
prefilled once and repeated per option), on the same questions, same model, same
process; both ranked answers compared.

  python benchmarks/rank_bench.py --model=<HF folder or GGUF> --dataset=csqa \
    --dataset_path=<Distilling Step-by-Step's cqa/> [--questions=64] [--chat_template]

Prints each path's seconds per repeat (the first repeat compiles) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from tinythinker_jax import student as student_lib  # noqa: E402
from tinythinker_jax.data import datasets  # noqa: E402
from tinythinker_jax.reasoning import ranking  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--dataset_path", default="")
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--chat_template", action="store_true")
  args = parser.parse_args()
  model = student_lib.build(args.model, settings=student_lib.StudentSettings(
      batch_size=args.batch_size, max_input_length=256, max_decode_length=48,
      chat_template=args.chat_template))
  questions, _ = datasets.load_split(args.dataset, args.dataset_path, "validation", 0,
                                     args.questions)
  requests = [ranking.rank_requests(e) for e in questions]
  flat = [pair for pairs in requests for pair in pairs]
  for repeat in range(args.repeats):
    start = time.time()
    repeated = model.score([p for p, _ in flat], [t for _, t in flat], eos=False)
    seconds_repeated = time.time() - start
    start = time.time()
    once = model.score_options([pairs[0][0] for pairs in requests],
                               [[t for _, t in pairs] for pairs in requests])
    seconds_once = time.time() - start
    print(f"repeat {repeat}: prompt repeated per option {seconds_repeated:.1f} s, "
          f"read once {seconds_once:.1f} s, ratio {seconds_repeated / seconds_once:.2f}x",
          flush=True)
  at, worst, same = 0, 0.0, 0
  for pairs, scores in zip(requests, once):
    a = np.array([s["logprob"] for s in repeated[at:at + len(pairs)]])
    b = np.array([s["logprob"] for s in scores])
    at += len(pairs)
    worst, same = max(worst, float(np.abs(a - b).max())), same + (a.argmax() == b.argmax())
  print(f"{len(requests)} questions, {len(flat)} options: largest log-prob difference "
        f"{worst:.2e}, same ranked answer on {same}/{len(requests)}")


if __name__ == "__main__":
  main()
