"""Every accelerator figure in one command: train steps and sampling, with MFU.

Runs `train_step_bench.py` and `sampling_bench.py` for each size (each in its
own process, so one run's memory is gone before the next), writes each run's
JSON to `--out`, and prints a Markdown table for BENCHMARKS.md. On a GPU or TPU
host it times ours alone in bfloat16 (the platform's default); on a CPU the
Hugging Face PyTorch runs come too, for the ratio.

  # a GPU host (`make install-gpu`) or a TPU VM (`make install-tpu`):
  python benchmarks/accelerator_bench.py --sizes=base,large --out=bench_out
  # this CPU, at sizes it can run:
  python benchmarks/accelerator_bench.py --sizes=tiny,small --out=bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# size -> (train flags, sampling flags); accelerator batches fill an 80 GB GPU
# without rematerialisation; CPU batches are the ones BENCHMARKS.md has used.
ACCELERATOR = {
    "tiny": (["--batch=256", "--input_length=512", "--target_length=128"],
             ["--batch=64", "--samples=4", "--input_length=512", "--new_tokens=128"]),
    "small": (["--batch=128", "--input_length=512", "--target_length=128"],
              ["--batch=64", "--samples=4", "--input_length=512", "--new_tokens=128"]),
    "base": (["--batch=64", "--input_length=512", "--target_length=128"],
             ["--batch=32", "--samples=4", "--input_length=512", "--new_tokens=128"]),
    "large": (["--batch=32", "--input_length=512", "--target_length=128"],
              ["--batch=16", "--samples=4", "--input_length=512", "--new_tokens=128"]),
}
CPU = {
    "tiny": (["--batch=64", "--input_length=96", "--target_length=48"],
             ["--batch=8", "--samples=4", "--input_length=96", "--new_tokens=48"]),
    "small": (["--batch=8", "--input_length=128", "--target_length=64"],
              ["--batch=8", "--samples=4", "--input_length=128", "--new_tokens=64"]),
    "base": (["--batch=4", "--input_length=128", "--target_length=64", "--rounds=2"],
             ["--batch=4", "--samples=2", "--input_length=128", "--new_tokens=32"]),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="base,large", help="t5_1_1 sizes, comma-separated")
  p.add_argument("--out", default="bench_out", help="folder for each run's JSON")
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--skip_sampling", action="store_true")
  return p.parse_args(argv)


def _run(script: str, flags: list[str], out: str) -> dict:
  command = [sys.executable, os.path.join(HERE, script), *flags, f"--json={out}"]
  print("+ " + " ".join(command), flush=True)
  result = subprocess.run(command, check=False)
  if result.returncode:
    return {"error": f"exit {result.returncode}"}
  with open(out, encoding="utf-8") as f:
    return json.load(f)


def _row(kind: str, size: str, result: dict, shape: str) -> list[list[str]]:
  if "error" in result:
    return [[kind, size, shape, "", result["error"], "", "", "", ""]]
  rows = []
  for name in ("ours (JAX)", "Hugging Face (PyTorch)", "Hugging Face generate (PyTorch)"):
    if name not in result:
      continue
    r = result[name]
    seconds = r.get("median_step_s", r.get("median_s"))
    mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
    rows.append([kind, size, shape, result["dtype"], name, f"{seconds:.4f}",
                 f"{r['tokens_per_s']:.0f}", f"{r['model_tflops_per_s']:.3f}", mfu])
  return rows


def _backend() -> str:
  """JAX's backend, from a process that exits at once: this one must not hold
  the devices (a TPU admits one process; a GPU's memory goes to the first) while
  the benchmarks run."""
  return subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                        check=True, capture_output=True, text=True).stdout.split()[-1]


def main(argv=None) -> int:
  args = parse_args(argv)
  backend = _backend()
  on_cpu = backend == "cpu"
  table = CPU if on_cpu else ACCELERATOR
  extra = [] if on_cpu else ["--skip_torch"]
  if args.peak_tflops:
    extra.append(f"--peak_tflops={args.peak_tflops}")
  os.makedirs(args.out, exist_ok=True)
  devices = set()
  lines = ["| bench | size | shape | dtype | runner | median s | tokens/s | model TFLOP/s "
           "| MFU |", "|---|---|---|---|---|---|---|---|---|"]
  for size in args.sizes.split(","):
    if size not in table:
      raise SystemExit(f"--sizes: {size!r} is not one of {sorted(table)} on this backend")
    train_flags, sample_flags = table[size]
    train = _run("train_step_bench.py", [f"--model=t5_1_1/{size}", *train_flags, *extra],
                 os.path.join(args.out, f"train_{size}.json"))
    shape = " ".join(f.split("=")[1] for f in train_flags[:3])
    devices.add(train.get("devices"))
    lines += ["| " + " | ".join(r) + " |" for r in _row("train step", size, train,
                                                         f"{shape} (batch in tgt)")]
    if not args.skip_sampling:
      sample = _run("sampling_bench.py", [f"--model=t5_1_1/{size}", *sample_flags, *extra],
                    os.path.join(args.out, f"sample_{size}.json"))
      shape = " ".join(f.split("=")[1] for f in sample_flags[:4])
      lines += ["| " + " | ".join(r) + " |" for r in _row(
          "sampling", size, sample, f"{shape} (batch samples in new)")]
  described = ", ".join(sorted(d for d in devices if d)) or "unknown"
  report = "\n".join([f"Devices: {described} (backend {backend})", ""] + lines)
  print(report)
  with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(report + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
