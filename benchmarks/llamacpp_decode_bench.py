"""Greedy decoding of a GGUF model: ours (JAX, batched, the weights dequantized to
float32) against llama.cpp (llama-cpp-python, one sequence at a time, as its
Python API and server decode) on the same GGUF, at float32 and at the file's own
quantization, with the same prompt token ids, in one process on one core.

  taskset -c 0 python benchmarks/llamacpp_decode_bench.py --dataset=svamp \
      --dataset_path=<distilling_step_by_step>/svamp [--gguf=<file>] [--prompts=32] \
      [--batch=32] [--max_length=128]

The float32 GGUF is written by llama.cpp's own quantizer (`llama_model_quantize`
with ftype ALL_F32 and requantizing allowed: each tensor dequantized, the
metadata and tokenizer copied), so it holds the numbers our loader dequantizes
from the quantized file: the same weights at the same precision class. The
quantized file runs in llama.cpp as users run it (quantized dot products). The
prompts are the format's prompts in the model's chat template; every variant
decodes every prompt once after a warm-up; printed: seconds, generated tokens,
tokens/s, and how many completions equal ours (text after detokenizing).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import bench_utils  # noqa: E402
from tinythinker_jax import student as student_lib  # noqa: E402
from tinythinker_jax.reasoning import chains  # noqa: E402
from tinythinker_jax.teacher import local  # noqa: E402


def float32_gguf(source: str, out: str) -> str:
  """`source` requantized to float32 by llama.cpp itself (cached at `out`)."""
  import llama_cpp  # pylint: disable=import-outside-toplevel
  if not os.path.exists(out):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 1
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params)):
      sys.exit(f"llama.cpp could not write {out} from {source}")
  return out


def llama_cpp_decode(gguf: str, rows: list[list[int]], max_length: int, eos: int,
                     threads: int) -> tuple[float, list[list[int]]]:
  """Greedy completions (HF ids, EOS excluded) of every row, one at a time."""
  import llama_cpp  # pylint: disable=import-outside-toplevel
  model = llama_cpp.Llama(model_path=gguf, n_ctx=1024, n_threads=threads,
                          n_threads_batch=threads, verbose=False)

  def one(row):
    out = []
    for token in model.generate(row, temp=0.0, top_k=1, reset=True):
      if token == eos or len(out) == max_length:
        break
      out.append(int(token))
    return out
  one(rows[0])  # warm-up
  start = time.perf_counter()
  outputs = [one(r) for r in rows]
  return time.perf_counter() - start, outputs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gguf", default=local.smollm2_gguf())
  bench_utils.add_prompt_flags(parser, prompts=32)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--f32_path", default="/tmp/llamacpp_decode_bench_f32.gguf")
  args = parser.parse_args()
  prompts = bench_utils.load_prompts(args)

  student = student_lib.build(args.gguf, settings=student_lib.StudentSettings(
      batch_size=args.batch, max_input_length=256, max_decode_length=args.max_length,
      chat_template=True))
  codec = student.codec
  greedy = chains.Sampling(max_length=args.max_length)
  student.generate(prompts[:args.batch], greedy)  # compiles
  start = time.perf_counter()
  ours = [g[0] for g in student.generate(prompts, greedy)]
  results = {"ours (JAX, float32, batches of %d)" % args.batch:
             (time.perf_counter() - start, [g.text for g in ours],
              sum(g.num_tokens for g in ours))}

  rows = bench_utils.hf_prompt_rows(student, prompts)
  eos = int(codec.hf_ids[codec.eos_id])
  for name, path in (("llama.cpp, float32 GGUF", float32_gguf(args.gguf, args.f32_path)),
                     (f"llama.cpp, {os.path.basename(args.gguf)}", args.gguf)):
    seconds, outputs = llama_cpp_decode(path, rows, args.max_length, eos, args.threads)
    texts = [codec.decode([int(codec.project_ids[t]) for t in o]) for o in outputs]
    # Tokens written, EOS counted as ours counts it.
    tokens = sum(len(o) + (len(o) < args.max_length) for o in outputs)
    results[name + ", one sequence at a time"] = (seconds, texts, tokens)

  reference = results[next(iter(results))][1]
  print(f"{len(prompts)} {args.dataset} prompts ({args.format}, chat template), greedy, up "
        f"to {args.max_length} new tokens, {args.threads} thread(s)\n")
  print("| decoder | seconds | tokens | tokens / s | completions equal to ours |")
  print("|---|---|---|---|---|")
  for name, (seconds, texts, tokens) in results.items():
    same = sum(a == b for a, b in zip(texts, reference))
    print(f"| {name} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} | "
          f"{same} of {len(texts)} |")


if __name__ == "__main__":
  main()
