"""Phase-1 training throughput with and without packing, on TinyThinker rationales.

Builds Coin Flip's TinyThinker rationales with the rule-based teacher (as
tests/conftest.py does) and a word vocabulary, materialises the stage
mixture (recall/analyze/summarize) twice as `tinythinker train` does
(`materialize.prepare_data`, unpacked and `pack=True`), and times the
trainer's jitted step (AdamW, the same model and row shape) on the batches the
trainer would take (TinyThinker's interleaved schedule, `BatchSource`), in
alternating rounds so that a change in the machine's load hits both alike.
Reports non-padding encoder + target tokens per second and examples per
second (median over the timed steps), the quantities the trainer logs as
`tokens_per_s` and `examples_per_s`.

  python benchmarks/packing_bench.py --model=t5_1_1/tiny --batch=64
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
  p.add_argument("--model", default="t5_1_1/tiny", help="gin_configs/models/<model>.gin")
  p.add_argument("--batch", type=int, default=64, help="rows per step")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps_per_round", type=int, default=10)
  p.add_argument("--inputs_length", type=int, default=96)
  p.add_argument("--targets_length", type=int, default=32)
  p.add_argument("--work_dir", default="", help="default: a temporary folder")
  p.add_argument("--json", help="also write the results here")
  return p.parse_args(argv)


def build_data(root: str) -> str:
  """Rule-based TinyThinker rationales for Coin Flip and a word vocabulary."""
  from tinythinker_jax.tokenizers import vocabularies  # pylint: disable=import-outside-toplevel
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


def load_streams(args, root: str, vocab: str, pack: bool):
  """The stage streams as `tinythinker train` materialises them, and the manifest."""
  from tinythinker_jax.stages import materialize  # pylint: disable=import-outside-toplevel
  from tinythinker_jax.data import arrays  # pylint: disable=import-outside-toplevel
  data_dir = os.path.join(root, "data_packed" if pack else "data_unpacked")
  manifest = materialize.prepare_data(
      "tinythinker.coin_flip.tinythinker",
      {"inputs": args.inputs_length, "targets": args.targets_length}, data_dir,
      splits=("train",), records_dir=os.path.join(root, "rationales"), vocabulary=vocab,
      pack=pack)
  streams = {t.rsplit(".", 1)[-1]: arrays.ArrayDataset(os.path.join(data_dir, t, "train"))
             for t in manifest["tasks"]}
  return streams, manifest


class Runner:
  """The trainer's step on one stream set, fed the trainer's batches in step order."""

  def __init__(self, config, streams, batch_size: int):
    import jax  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from tinythinker_jax import partitioning  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.data import arrays  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.models import t5  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.families import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
    from tinythinker_jax.training import objectives, step  # pylint: disable=import-outside-toplevel
    self._jax = jax
    self.partitioner = partitioning.Partitioner(partitioning.create_mesh())
    params, _ = self.partitioner.init(lambda r: t5.init_params(config, r),
                                      jax.random.key(0))
    optimizer = optax.adamw(2e-3)
    self.state = self.partitioner.partition(
        lambda p: step.TrainState.create(p, optimizer))(params)
    model = objectives.TokenCrossEntropy(EncoderDecoderModel(config), z_loss=1e-4)
    self.fn = self.partitioner.partition(step.make_train_step(model, optimizer),
                                         donate_argnums=(0,))
    schedule = arrays.InterleavedSchedule.tinythinker(10, 2, tuple(streams))
    self.source = arrays.BatchSource(streams, batch_size, 0, schedule)
    self.position = 0
    self.rng = jax.random.key(0)

  def __call__(self):
    """One step; returns its (non-padding tokens, examples)."""
    batch = self.source(self.position)
    self.position += 1
    self.state, metrics = self.fn(self.state, self.partitioner.shard_batch(batch), self.rng)
    metrics = self._jax.device_get(metrics)
    return float(metrics["nonpadding_tokens"]), float(metrics["examples"])


def main(argv=None):
  args = parse_args(argv)
  root = args.work_dir or tempfile.mkdtemp(prefix="packing_bench_")
  os.makedirs(root, exist_ok=True)
  import jax  # pylint: disable=import-outside-toplevel
  vocab = build_data(root)
  config = bench_utils.load_config(args.model, "float32", ["NUM_EMBEDDINGS = 256"])
  results = {"model": args.model, "batch_rows": args.batch,
             "timed_steps": args.rounds * args.steps_per_round,
             "lengths": {"inputs": args.inputs_length, "targets": args.targets_length},
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "cpus": os.cpu_count()}
  runners, samples = {}, {}
  for pack in (False, True):
    name = "packed" if pack else "unpacked"
    streams, manifest = load_streams(args, root, vocab, pack)
    results[name] = {
        "rows_per_stage": {t.rsplit(".", 1)[-1]: s["train"]
                           for t, s in manifest["tasks"].items()},
        "examples_per_stage": {t.rsplit(".", 1)[-1]: s["train"]
                               for t, s in manifest["sequences"].items()}}
    runners[name] = Runner(config, streams, args.batch)
    runners[name]()  # compilation
    samples[name] = []
  # TinyThinker's cycle is 40 steps (10 recall, 20 analyze, 10 summarize):
  # rounds of `steps_per_round` walk through it for both alike.
  for _ in range(args.rounds):
    for name, runner in runners.items():
      for _ in range(args.steps_per_round):
        start = time.perf_counter()
        tokens, examples = runner()
        samples[name].append((time.perf_counter() - start, tokens, examples))
  for name, rows in samples.items():
    seconds = sum(r[0] for r in rows)
    results[name].update(
        median_step_s=round(statistics.median(r[0] for r in rows), 4),
        tokens_per_s=round(sum(r[1] for r in rows) / seconds, 1),
        examples_per_s=round(sum(r[2] for r in rows) / seconds, 1),
        nonpadding_fraction=round(sum(r[1] for r in rows) / (
            len(rows) * args.batch * (args.inputs_length + args.targets_length)), 3))
  results["speedup_tokens_per_s"] = round(results["packed"]["tokens_per_s"] /
                                          results["unpacked"]["tokens_per_s"], 2)
  return bench_utils.report(results, args.json)


if __name__ == "__main__":
  main()
