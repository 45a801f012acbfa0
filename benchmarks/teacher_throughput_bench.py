"""Teacher throughput of the embedded llama.cpp teacher: one server answering
one request at a time against several server processes sharing the cores.

Teaches the first N CommonsenseQA training questions with TinyThinker's format
(structured output, S samples each) once per configuration, from an empty
cache, and prints one markdown table: wall time, samples per minute, completion
tokens per second, and whether the records equal the first configuration's
(each sample carries its own seed, so they should wherever the servers compute
with the same number of threads).

  .venv/bin/python benchmarks/teacher_throughput_bench.py \\
      --csqa=../shared/data/tinythinker/csqa --prompts=../shared/data/tinythinker/prompts

`--configs` lists servers x threads per server (default `1x2,2x1`). By default
a server reuses whole blocks of the previous request's prompt (the few-shot
prefix) and evaluates the rest as from an empty cache (`LocalServer.reuse_block`,
order-independent); a trailing `w` evaluates every prompt whole (no reuse, the
default before), a trailing `r` lets the servers reuse the previous request's
prompt prefix as llama-cpp-python does on its own (order-dependent). The threads of a configuration should not exceed the machine's cores.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_utils  # noqa: E402
from tinythinker_jax import paths  # noqa: E402
from tinythinker_jax.stages import teach as run  # noqa: E402
from tinythinker_jax.teacher import pipelines  # noqa: E402
from tinythinker_jax.teacher.local import LocalServer  # noqa: E402


def records(folder: str) -> list[tuple]:
  return sorted((r["id"], r["sample_index"], r["raw_reply"])
                for r in paths.read_jsonl(os.path.join(folder, pipelines.RECORDS)))


def main() -> None:
  parser = bench_utils.teacher_parser(__doc__, questions=6, samples=2,
                                      output_dir="/tmp/teacher_throughput_bench")
  parser.add_argument("--configs", default="1x2,2x1")
  parser.add_argument("--reuse_block", type=int, default=LocalServer.reuse_block,
                      help="tokens per reused prompt block (LocalServer.reuse_block)")
  args = parser.parse_args()
  gguf = bench_utils.teacher_gguf(args)
  settings = pipelines.TinyThinkerSettings(
      num_samples=args.samples, num_shots=args.num_shots, structured_output="json_object",
      format_retries=0)
  rows, first = [], None
  for config in args.configs.split(","):
    reuse, whole = config.endswith("r"), config.endswith("w")
    servers, threads = (int(x) for x in config.rstrip("rw").split("x"))
    out = os.path.join(args.output_dir, config)
    shutil.rmtree(out, ignore_errors=True)
    with LocalServer(gguf, num_servers=servers, n_threads=servers * threads,
                     fresh_prompts=not reuse,
                     reuse_block=0 if whole else args.reuse_block
                     ) as server:
      start = time.perf_counter()
      summary = run.teach_dataset(
          dataset="csqa", dataset_path=args.csqa, output_dir=out, method="tinythinker",
          teacher="openai", teacher_config=server.teacher_config(),
          max_examples=args.questions, prompts_dir=args.prompts, tinythinker=settings,
          progress=False)
      wall = time.perf_counter() - start
    kept = records(out)
    first = kept if first is None else first
    tokens = summary.usage.get("completion_tokens", 0)
    mode = (" (llama-cpp-python's prefix reuse)" if reuse else
            " (every prompt whole)" if whole else
            f" (whole {args.reuse_block}-token blocks reused)")
    rows.append((f"{servers} x {threads}" + mode,
                 summary.samples, f"{wall:.0f}",
                 f"{60 * summary.samples / wall:.2f}", f"{tokens / wall:.1f}", tokens,
                 "yes" if kept == first else f"no ({len(kept)} vs {len(first)} kept)"))
    print(json.dumps({"config": config, "wall_s": wall, "summary_kept": summary.kept,
                      "usage": summary.usage}), flush=True)
  print(f"\n{args.questions} CSQA train questions x {args.samples} TinyThinker samples, "
        f"{args.num_shots} shots, teacher {os.path.basename(gguf)}, {os.cpu_count()} cores\n")
  print("| servers x threads each | samples | wall (s) | samples / min | completion tokens / s "
        "| completion tokens | records equal to the first row's |")
  print("|---|---|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
  main()
