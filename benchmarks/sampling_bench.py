"""Sampling throughput (generated tokens/s): our KV-cached decoder against
Hugging Face `generate`, same weights, prompts, lengths and settings, one process.

The model is a randomly initialised T5 of a gin model size, written once as a
Hugging Face folder with `save_hf_t5` so both frameworks run the same weights.
Both sample `--samples` continuations of each of `--batch` prompts at
temperature 0.7 (top-k off, as TinyThinker's recall sampling) for exactly
`--new_tokens` tokens (EOS is suppressed in both, so the work is equal).
After warm-up (which includes our compile, reported separately) the two are
timed in alternating rounds; the median is reported, with model-FLOPs
utilisation (`flops.decode_flops`: the encoder once per prompt, then each
cached step; decoding is memory-bound, so expect a small fraction).

  python benchmarks/sampling_bench.py --model=t5_1_1/small --batch=8 --samples=4 \
      --input_length=128 --new_tokens=64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_utils  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="t5_1_1/small", help="gin_configs/models/<model>.gin")
  p.add_argument("--batch", type=int, default=8, help="prompts")
  p.add_argument("--samples", type=int, default=4, help="samples per prompt")
  p.add_argument("--input_length", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="auto: bfloat16 on TPU/GPU, float32 on CPU")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="the devices' peak TFLOP/s, all together, for MFU")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--json", help="also write the results here")
  return p.parse_args(argv)


class Ours:
  def __init__(self, config, params, prompts, args):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from tinythinker_jax import decoding  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
    self._jax = jax
    model = t5.T5(config)
    self.params = jax.device_put(params)
    self.prompts = jnp.asarray(prompts)
    # eos_id=-1 never matches: every row generates exactly new_tokens tokens.
    self.fn = jax.jit(lambda p, x, r: decoding.sample_decode(
        model, p, x, r, max_length=args.new_tokens, num_samples=args.samples,
        temperature=args.temperature, eos_id=-1).tokens)
    self.calls = 0

  def __call__(self):
    self.calls += 1
    out = self.fn(self.params, self.prompts, self._jax.random.key(self.calls))
    return self._jax.block_until_ready(out).shape


class HuggingFace:
  def __init__(self, folder, prompts, args):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.resolved_dtype == "bfloat16" else torch.float32
    self.model = transformers.T5ForConditionalGeneration.from_pretrained(
        folder, dtype=dtype).eval()
    self.torch = torch
    self.inputs = torch.tensor(prompts, dtype=torch.long)
    self.args = args

  def __call__(self):
    a = self.args
    with self.torch.inference_mode():
      out = self.model.generate(
          input_ids=self.inputs, attention_mask=self.inputs.ne(0), do_sample=True,
          temperature=a.temperature, top_k=0, top_p=1.0, max_new_tokens=a.new_tokens,
          min_new_tokens=a.new_tokens, num_return_sequences=a.samples, use_cache=True)
    return tuple(out.shape)


def timed(fn):
  start = time.perf_counter()
  shape = fn()
  return time.perf_counter() - start, shape


def main(argv=None):
  args = parse_args(argv)
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.convert import save_hf_t5  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
  config = bench_utils.load_config(args.model, args.dtype)
  args.resolved_dtype = config.dtype
  params = jax.device_get(nn.unbox(t5.init_params(config.replace(dtype="float32"),
                                                  jax.random.key(0))))
  prompts = np.random.default_rng(0).integers(
      3, config.vocab_size - 200, (args.batch, args.input_length)).astype(np.int32)
  prompts[:, -1] = 1
  runners = {}
  start = time.perf_counter()
  runners["ours (JAX)"] = Ours(config, params, prompts, args)
  compile_s = timed(runners["ours (JAX)"])[0]
  with tempfile.TemporaryDirectory() as folder:
    if not args.skip_torch:
      save_hf_t5(config.replace(dtype="float32"), params, folder)
      runners["Hugging Face generate (PyTorch)"] = HuggingFace(folder, prompts, args)
      runners["Hugging Face generate (PyTorch)"]()  # warm-up
    del start
    samples = {name: [] for name in runners}
    for _ in range(args.rounds):
      for name, runner in runners.items():
        seconds, shape = timed(runner)
        samples[name].append(seconds)
  tokens = args.batch * args.samples * args.new_tokens
  from tinythinker_jax.models import flops  # pylint: disable=import-outside-toplevel
  call_flops = flops.decode_flops(config, args.batch, args.input_length, args.new_tokens,
                                  num_samples=args.samples)
  results = {"model": args.model, "batch": args.batch, "samples": args.samples,
             "rows": args.batch * args.samples, "input_length": args.input_length,
             "new_tokens": args.new_tokens, "temperature": args.temperature,
             "dtype": config.dtype, "threads": args.threads,
             "model_flops_per_call": call_flops,
             # The sampler is one jit on the default device: its peak alone.
             **bench_utils.peak_note(config.dtype, args.peak_tflops, jax.devices()[:1]),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "ours_first_call_s (compile + run)": round(compile_s, 2)}
  for name, times in samples.items():
    median = statistics.median(times)
    results[name] = {"median_s": round(median, 3), "tokens_per_s": round(tokens / median, 1),
                     **bench_utils.utilisation(call_flops, median, config.dtype,
                                               args.peak_tflops, jax.devices()[:1])}
  if not args.skip_torch:
    results["speedup_ours_over_hf"] = round(
        results["Hugging Face generate (PyTorch)"]["median_s"] /
        results["ours (JAX)"]["median_s"], 2)
  return bench_utils.report(results, args.json)


if __name__ == "__main__":
  main()
