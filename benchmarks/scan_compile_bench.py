"""Compile time of the train step with and without `T5Config.scan_layers`.

For each depth and layout, a fresh process builds the model (a model gin file's
widths, `--layers` encoder and decoder layers), the per-layer Adafactor the
trainer uses, and the jitted train step of `training.step` on all local
devices; it times tracing (`lower`) and XLA compilation (`compile`) of that
step, then the median of a few executed steps. A fresh process per
measurement keeps one program's compilation from warming the next; JAX's
persistent compilation cache is off.

  python benchmarks/scan_compile_bench.py --model=t5_1_1/tiny --layers=6,12,24
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_utils  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="t5_1_1/tiny", help="gin_configs/models/<model>.gin")
  p.add_argument("--layers", default="6,12,24",
                 help="encoder (= decoder) depths to measure, comma-separated")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input_length", type=int, default=64)
  p.add_argument("--target_length", type=int, default=32)
  p.add_argument("--remat_policy", default="none", choices=["none", "full", "minimal"])
  p.add_argument("--steps", type=int, default=5, help="executed steps timed after compiling")
  p.add_argument("--one", help=argparse.SUPPRESS)  # internal: 'layers,scan' in a child
  p.add_argument("--json", help="also write the results here")
  return p.parse_args(argv)


def measure(args, layers: int, scan: bool) -> dict:
  """One measurement, in this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import partitioning  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.families import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import objectives, optimizers  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  config = bench_utils.load_config(args.model, "float32").replace(
      num_encoder_layers=layers, num_decoder_layers=layers, scan_layers=scan,
      remat_policy=args.remat_policy, dropout_rate=0.0)
  partitioner = partitioning.Partitioner(partitioning.create_mesh())
  optimizer = optimizers.make_optimizer(
      "adafactor", optimizers.make_schedule("constant", learning_rate=1e-3,
                                            warmup_steps=0),
      param_axes=optimizers.param_logical_axes(EncoderDecoderModel(config).abstract_params()))
  params, _ = partitioner.init(lambda r: t5.init_params(config, r), jax.random.key(0))
  state = partitioner.partition(lambda p: step_lib.TrainState.create(p, optimizer))(params)
  model = objectives.TokenCrossEntropy(EncoderDecoderModel(config))
  fn = partitioner.partition(step_lib.make_train_step(model, optimizer), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config.vocab_size, (args.batch, args.input_length)).astype(np.int32)
  targets = rng.integers(2, config.vocab_size,
                         (args.batch, args.target_length)).astype(np.int32)
  batch = partitioner.shard_batch({
      "encoder_input_tokens": enc, "decoder_target_tokens": targets,
      "decoder_input_tokens": np.asarray(step_lib.shift_right(targets))})
  key = jax.random.key(0)
  start = time.perf_counter()
  lowered = fn.lower(state, batch, key)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  times = []
  with partitioner.activate():
    for _ in range(args.steps + 1):
      t = time.perf_counter()
      state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - t)
  return {"layers": f"{layers}+{layers}", "scan_layers": scan,
          "trace_s": round(traced - start, 2), "compile_s": round(done - traced, 2),
          "lower_plus_compile_s": round(done - start, 2),
          "median_step_s": round(statistics.median(times[1:]), 4),
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "load_average_1m": round(os.getloadavg()[0], 2)}


def main(argv=None):
  args = parse_args(argv)
  if args.one:
    layers, scan = args.one.split(",")
    print(json.dumps(measure(args, int(layers), scan == "1")))
    return None
  env = dict(os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  rows = []
  forwarded = [f"--model={args.model}", f"--batch={args.batch}",
               f"--input_length={args.input_length}",
               f"--target_length={args.target_length}",
               f"--remat_policy={args.remat_policy}", f"--steps={args.steps}"]
  for layers in (int(n) for n in args.layers.split(",")):
    for scan in (False, True):
      out = subprocess.run([sys.executable, __file__, *forwarded,
                            f"--one={layers},{int(scan)}"], env=env, check=True,
                           capture_output=True, text=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  results = {"model": args.model, "batch": args.batch, "input_length": args.input_length,
             "target_length": args.target_length, "remat_policy": args.remat_policy,
             "optimizer": "adafactor (per layer when scanned)", "rows": rows}
  return bench_utils.report(results, args.json, echo=False)


if __name__ == "__main__":
  main()
