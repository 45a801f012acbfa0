"""Per-device memory of a model's parameters and whole train state on a mesh,
from shapes alone (nothing is allocated): what sharded loading and training
would place on each device.

    python benchmarks/memory_plan.py --model=t5_1_1/xxl --devices=8

runs on fake CPU devices (`--devices` of them), so a pod's layout can be
checked on a laptop. Parameters are restored (evaluation, sampling, the DPO
reference, initial weights, export) with the parameter rows' shardings; the
train state adds the optimizer's statistics with theirs.
"""

import argparse
import os
import sys


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="t5_1_1/xxl", help="gin_configs/models/<model>.gin")
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
  p.add_argument("--meshes", default="",
                 help="comma-separated DATAxMODELxPARAM_DIMS, e.g. 8x1x2,2x4x1 "
                 "(default: a spread for --devices)")
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import gin_utils, partitioning  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import optimizers  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel

  gin_utils.parse([f"models/{args.model}.gin"], ["DROPOUT_RATE = 0.0"])
  config = gin.get_configurable(t5.T5Config)()
  n = args.devices
  meshes = ([tuple(int(v) for v in m.split("x")) for m in args.meshes.split(",")]
            if args.meshes else [(n, 1, 1), (n, 1, 2), (max(n // 4, 1), min(4, n), 1),
                                 (max(n // 4, 1), min(4, n), 2), (1, n, 1)])
  boxed = jax.eval_shape(lambda r: t5.init_params(config, r), jax.random.key(0))
  params = nn.unbox(boxed)
  optimizer = optimizers.make_optimizer(args.optimizer, optimizers.make_schedule(
      "constant", learning_rate=1e-3, warmup_steps=0),
      param_axes=optimizers.param_logical_axes(boxed))
  state = jax.eval_shape(lambda p: step_lib.TrainState.create(p, optimizer), params)
  gib = 2.0 ** 30
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  state_total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  print(f"{args.model}: {sum(x.size for x in jax.tree.leaves(params)) / 1e9:.2f}B "
        f"parameters, {total / gib:.1f} GiB ({config.param_dtype}); train state with "
        f"{args.optimizer}: {state_total / gib:.1f} GiB; {n} devices")
  print("| mesh (data x model) | parameter_partitioning_dims | params / device (GiB) "
        "| train state / device (GiB) | largest parameter on one device (MiB) |")
  print("|---|---|---|---|---|")
  for data, model, dims in meshes:
    if data * model != n:
      continue
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(data, model),
        partitioning.standard_logical_axis_rules(parameter_partitioning_dims=dims))
    param_shardings = partitioner.param_shardings(boxed)
    per_param = partitioning.bytes_per_device(params, param_shardings)
    state_shardings = partitioner.logical_shardings(
        optimizers.train_state_logical_axes(state, boxed))
    per_state = partitioning.bytes_per_device(state, state_shardings)
    largest = max(max(partitioning.bytes_per_device(x, s).values())
                  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(
                      param_shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))))
    print(f"| {data} x {model} | {dims} | {max(per_param.values()) / gib:.2f} | "
          f"{max(per_state.values()) / gib:.2f} | {largest / 2**20:.0f} |")


if __name__ == "__main__":
  main()
