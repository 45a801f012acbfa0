"""Phase-1 training throughput with and without packing, on TinyThinker rationales.

Builds Coin Flip's TinyThinker rationales with the rule-based teacher (as
tests/conftest.py does) and a word vocabulary, then trains the same model on
the same stage mixture (recall/analyze/summarize, interleaved as TinyThinker
does) twice through `train.run`: unpacked rows, then seqio-packed rows
(`pack=True`). Reports the trainer's own `tokens_per_s` (non-padding encoder
and target tokens per second) and `examples_per_s`, median over the log
intervals after the first (which holds the compilation).

  python benchmarks/packing_bench.py --model=t5_1_1/tiny --batch=64 --steps=60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="t5_1_1/tiny", help="gin_configs/models/<model>.gin")
  p.add_argument("--batch", type=int, default=64, help="rows per step")
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--inputs_length", type=int, default=96)
  p.add_argument("--targets_length", type=int, default=32)
  p.add_argument("--work_dir", default="", help="default: a temporary folder")
  p.add_argument("--json", help="also write the results here")
  return p.parse_args(argv)


def build_data(root: str) -> str:
  """Rule-based TinyThinker rationales for Coin Flip and a word vocabulary."""
  from tinythinker_jax import vocabularies  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.data.schema import AnswerType  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.teacher import pipelines  # pylint: disable=import-outside-toplevel
  splits = datasets.load_dataset("coin_flip", seed=0)
  out = os.path.join(root, "rationales", "coin_flip", "tinythinker", "train")
  if not os.path.exists(os.path.join(out, "records.jsonl")):
    pipelines.teach(splits["train"], method=pipelines.Method.TINYTHINKER,
                    answer_type=AnswerType.YES_NO, output_dir=out, teacher=None,
                    progress=False)
  vocab = os.path.join(root, "spm.model")
  if not os.path.exists(vocab):
    vocab = vocabularies.train_sentencepiece(
        vocabularies.iter_rendered([os.path.join(out, "records.jsonl")], "tinythinker"),
        64, os.path.join(root, "spm"), model_type="word", hard_vocab_limit=False)
  return vocab


def load_config(model: str):
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import gin_utils  # pylint: disable=import-outside-toplevel
  gin_utils.parse([f"models/{model}.gin"], ["DROPOUT_RATE = 0.0", "NUM_EMBEDDINGS = 256",
                                             "ACTIVATION_DTYPE = 'float32'"])
  config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG"))
  gin.clear_config()
  return config


def run_once(args, root: str, vocab: str, config, pack: bool) -> dict:
  from tinythinker_jax import train  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.training import recipe  # pylint: disable=import-outside-toplevel
  name = "packed" if pack else "unpacked"
  model_dir = os.path.join(root, name)
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  train.run(model_dir=model_dir, model_config=config,
            mixture_or_task_name="tinythinker.coin_flip.tinythinker",
            task_feature_lengths=lengths, pack=pack, progress=False,
            settings=recipe.TrainSettings(
                batch_size=args.batch, train_steps=args.steps, optimizer="adamw",
                schedule="constant", learning_rate=2e-3, log_every=args.log_every,
                checkpoint_every=args.steps, async_checkpoints=False, eval_every=0),
            records_dir=os.path.join(root, "rationales"), vocabulary=vocab,
            data_dir=os.path.join(root, f"data_{name}"),
            interleave_interval=10, num_options=2)
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  logged = [r for r in rows if "train/tokens_per_s" in r][1:]  # first: compilation
  with open(os.path.join(root, f"data_{name}", "manifest.json")) as f:
    manifest = json.load(f)
  return {"rows_per_stage": {t.rsplit(".", 1)[-1]: s["train"]
                             for t, s in manifest["tasks"].items()},
          "examples_per_stage": {t.rsplit(".", 1)[-1]: s["train"]
                                 for t, s in manifest["sequences"].items()},
          "tokens_per_s": round(statistics.median(
              r["train/tokens_per_s"] for r in logged), 1),
          "examples_per_s": round(statistics.median(
              r["train/examples_per_s"] for r in logged), 1),
          "steps_per_s": round(statistics.median(r["train/steps_per_s"] for r in logged), 3),
          "final_loss": round(rows[-1].get("train/loss", float("nan")), 4)}


def main(argv=None):
  args = parse_args(argv)
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  root = args.work_dir or tempfile.mkdtemp(prefix="packing_bench_")
  os.makedirs(root, exist_ok=True)
  import jax  # pylint: disable=import-outside-toplevel
  vocab = build_data(root)
  config = load_config(args.model)
  results = {"model": args.model, "batch_rows": args.batch, "steps": args.steps,
             "lengths": {"inputs": args.inputs_length, "targets": args.targets_length},
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "cpus": os.cpu_count()}
  for pack in (False, True):
    results["packed" if pack else "unpacked"] = run_once(args, root, vocab, config, pack)
  results["speedup_tokens_per_s"] = round(results["packed"]["tokens_per_s"] /
                                          results["unpacked"]["tokens_per_s"], 2)
  print(json.dumps(results, indent=2))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
