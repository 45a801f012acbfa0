"""Times one training step (forward, backward, AdamW) of our T5 against HF PyTorch T5.

Both models get the same configuration (a model gin file), the same token batch
(no padding, so both average the loss over the same tokens), the same optimizer
settings and the same thread count, in one process. PyTorch's AdamW is the fused
one by default (`--torch_adamw`), as the Hugging Face Trainer uses with torch >= 2.8. After warm-up the two are
timed in alternating rounds and the median step time of each is reported, with
tokens/s and model-FLOPs utilisation (`tinythinker_jax.models.flops`: 6·N per
token plus attention, over the devices' peak from `tinythinker_jax.platforms`
or `--peak_tflops`).

  python benchmarks/train_step_bench.py --model=t5_1_1/small --batch=8 \
      --input_length=128 --target_length=64
  # a GPU or TPU host: ours alone, bfloat16 (the default there)
  python benchmarks/train_step_bench.py --model=t5_1_1/base --batch=64 \
      --input_length=512 --target_length=128 --skip_torch
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_utils  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="t5_1_1/small", help="gin_configs/models/<model>.gin")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input_length", type=int, default=128)
  p.add_argument("--target_length", type=int, default=64)
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype (bfloat16: torch autocast vs our bf16 compute; "
                 "auto: bfloat16 on TPU/GPU, float32 on CPU)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="the devices' peak TFLOP/s, all together, for MFU (default: "
                 "tinythinker_jax.platforms' table by device kind; on CPU an "
                 "estimate from cores x clock x FLOPs per cycle)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps_per_round", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--skip_torch", action="store_true", help="time ours only (no torch)")
  p.add_argument("--torch_adamw", default="fused", choices=["fused", "foreach", "for-loop"],
                 help="torch.optim.AdamW implementation; 'fused' is what the Hugging Face "
                      "Trainer uses by default with torch >= 2.8 ('for-loop' is "
                      "torch.optim.AdamW's own default on CPU)")
  p.add_argument("--json", help="also write the results here")
  return p.parse_args(argv)


def make_batch(config, args):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config.vocab_size, (args.batch, args.input_length))
  targets = rng.integers(2, config.vocab_size, (args.batch, args.target_length))
  return enc.astype(np.int32), targets.astype(np.int32)


class OursStep:
  """Our jitted, partitioned train step on all local devices."""

  def __init__(self, config, enc, targets):
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from tinythinker_jax import partitioning  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.families import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.training import objectives  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.training import step  # pylint: disable=import-outside-toplevel
    self._jax = jax
    partitioner = partitioning.Partitioner(partitioning.create_mesh())
    params, _ = partitioner.init(lambda r: t5.init_params(config, r), jax.random.key(0))
    optimizer = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    self.state = partitioner.partition(lambda p: step.TrainState.create(p, optimizer))(
        params)
    model = objectives.TokenCrossEntropy(EncoderDecoderModel(config), z_loss=0.0)
    self.fn = partitioner.partition(step.make_train_step(model, optimizer),
                                    donate_argnums=(0,))
    self.batch = partitioner.shard_batch({
        "encoder_input_tokens": enc, "decoder_target_tokens": targets,
        "decoder_input_tokens": np.asarray(step.shift_right(targets))})
    self.rng = jax.random.key(0)

  def __call__(self):
    self.state, metrics = self.fn(self.state, self.batch, self.rng)
    return float(self._jax.block_until_ready(metrics["loss"]))


class TorchStep:
  """Hugging Face's T5ForConditionalGeneration with torch.optim.AdamW."""

  def __init__(self, config, enc, targets, threads, adamw="fused"):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.convert import hf  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    hf_config = transformers.T5Config(**{
        k: v for k, v in hf.config_to_hf(config.replace(dropout_rate=0.0)).items()
        if k not in ("architectures", "scale_decoder_outputs")})
    torch.manual_seed(0)
    self.model = transformers.T5ForConditionalGeneration(hf_config).train()
    if not config.logits_via_embedding:
      self.model.lm_head.weight = torch.nn.Parameter(
          torch.randn(config.vocab_size, config.emb_dim))
    implementation = {"fused": {"fused": True}, "foreach": {"foreach": True},
                      "for-loop": {"foreach": False}}[adamw]
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4,
                                       betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                       **implementation)
    self.enc = torch.tensor(enc, dtype=torch.long)
    self.labels = torch.tensor(targets, dtype=torch.long)
    self.autocast = config.dtype == "bfloat16"
    self.torch = torch

  def __call__(self):
    torch = self.torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
      loss = self.model(input_ids=self.enc, labels=self.labels).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_steps(step, n):
  times = []
  for _ in range(n):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def main(argv=None):
  args = parse_args(argv)
  config = bench_utils.load_config(args.model, args.dtype)
  enc, targets = make_batch(config, args)
  import jax  # pylint: disable=import-outside-toplevel
  runners = {"ours (JAX)": OursStep(config, enc, targets)}
  if not args.skip_torch:
    runners["Hugging Face (PyTorch)"] = TorchStep(config, enc, targets, args.threads,
                                                  args.torch_adamw)
  for step in runners.values():
    time_steps(step, args.warmup)
  samples = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, step in runners.items():
      samples[name] += time_steps(step, args.steps_per_round)
  tokens = args.batch * (args.input_length + args.target_length)
  from tinythinker_jax.models import flops  # pylint: disable=import-outside-toplevel
  step_flops = flops.train_step_flops(config, args.batch, args.input_length,
                                      args.target_length)
  results = {"model": args.model, "batch": args.batch, "input_length": args.input_length,
             "target_length": args.target_length, "dtype": config.dtype,
             "model_flops_per_step": step_flops, **bench_utils.peak_note(config.dtype, args.peak_tflops),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "threads": args.threads, "timed_steps": args.rounds * args.steps_per_round,
             "torch_adamw": None if args.skip_torch else args.torch_adamw}
  for name, times in samples.items():
    median = statistics.median(times)
    results[name] = {"median_step_s": round(median, 4),
                     "examples_per_s": round(args.batch / median, 2),
                     "tokens_per_s": round(tokens / median, 1),
                     **bench_utils.utilisation(step_flops, median, config.dtype,
                                              args.peak_tflops)}
  if not args.skip_torch:
    results["ratio_ours_over_pytorch"] = round(
        results["ours (JAX)"]["examples_per_s"] /
        results["Hugging Face (PyTorch)"]["examples_per_s"], 3)
  return bench_utils.report(results, args.json)


if __name__ == "__main__":
  main()
