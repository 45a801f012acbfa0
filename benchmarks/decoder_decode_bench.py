"""Decoder-only greedy decoding of real prompts: ours with finished rows set aside
(`decoding.shrink_levels`), ours keeping every row to the batch's end (the
loop before that change), and transformers' `generate` on the same weights, the
same token ids and the same batches, in one process.

  python benchmarks/decoder_decode_bench.py --model_dir=<a decoder-only model dir> \
    --dataset=svamp --dataset_path=<distilling_step_by_step>/svamp \
    [--format=finetune_cot_decoder] [--prompts=64] [--batch=32] [--max_length=128]

Each variant decodes every prompt once after a warm-up call that compiles it;
prints seconds, generated tokens, the mean and the batch-longest output lengths,
and how often the variants' token sequences agree. transformers runs with
`torch.set_num_threads(1)`; pin the process to one core (`taskset -c 0`) so both
frameworks get the same CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import bench_utils  # noqa: E402
from tinythinker_jax import decoding  # noqa: E402
from tinythinker_jax import student as student_lib  # noqa: E402
from tinythinker_jax.reasoning import chains  # noqa: E402
from tinythinker_jax.stages import export  # noqa: E402


def _ours(model_dir: str, prompts: list[str], args) -> tuple[float, list[list[int]]]:
  student = student_lib.build(model_dir, settings=student_lib.StudentSettings(
      batch_size=args.batch, max_input_length=256, max_decode_length=args.max_length))
  greedy = chains.Sampling(max_length=args.max_length)
  student.generate(prompts[:args.batch], greedy)  # compiles
  start = time.time()
  out = student.generate(prompts, greedy)
  seconds = time.time() - start
  return seconds, [student.codec.encode(g[0].text) for g in out], student


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  bench_utils.add_prompt_flags(parser, prompts=64)
  parser.add_argument("--no_hf", action="store_true")
  args = parser.parse_args()
  prompts = bench_utils.load_prompts(args)
  results = {}
  seconds, tokens, student = _ours(args.model_dir, prompts, args)
  results["ours, finished rows set aside"] = (seconds, tokens)
  levels = decoding.shrink_levels
  decoding.shrink_levels = lambda rows: [rows]
  try:
    results["ours, every row to the end"] = _ours(args.model_dir, prompts, args)[:2]
  finally:
    decoding.shrink_levels = levels
  if not args.no_hf:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
    codec = student.codec
    with tempfile.TemporaryDirectory() as tmp:
      folder = export.export_student(args.model_dir, os.path.join(tmp, "hf"))
      model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    rows = bench_utils.hf_prompt_rows(student, prompts)
    pad, eos = codec.exported_pad_id, int(codec.hf_ids[codec.eos_id])

    def run_hf():
      out = []
      for start in range(0, len(rows), args.batch):
        chunk = rows[start:start + args.batch]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk])
        with torch.no_grad():
          generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=args.max_length, eos_token_id=eos,
                                     pad_token_id=pad)
        for row in generated[:, width:].tolist():
          kept = row[:row.index(eos)] if eos in row else row
          out.append([int(codec.project_ids[t]) for t in kept])
      return out
    run_hf()  # warm-up
    start = time.time()
    results["transformers generate"] = (time.time() - start, None)
    hf_tokens = run_hf()
    results["transformers generate"] = (time.time() - start, hf_tokens)
  reference = results["ours, finished rows set aside"][1]
  base = results["ours, every row to the end"][0]
  print(f"{len(prompts)} prompts, batches of {args.batch}, up to {args.max_length} tokens")
  for name, (seconds, tokens) in results.items():
    lengths = np.array([len(t) for t in tokens])
    longest = np.mean([lengths[i:i + args.batch].max()
                       for i in range(0, len(lengths), args.batch)])
    same = np.mean([a == b for a, b in zip(tokens, reference)])
    print(f"{name}: {seconds:.1f} s ({base / seconds:.2f}x the full-batch loop), "
          f"{lengths.sum()} tokens, mean length {lengths.mean():.1f}, batch-longest "
          f"{longest:.1f}, same tokens as ours {same:.0%}", flush=True)


if __name__ == "__main__":
  main()
