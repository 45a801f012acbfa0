"""The untrained model's row: a pretrained (instruct) model evaluated with no training,
its rank-classification prompt chosen on validation questions, never on test.

  python benchmarks/untrained_baseline.py --model=<HF folder or GGUF> --dataset=csqa \
    --dataset_path=<Distilling Step-by-Step's cqa/> --out=runs/real/csqa/untrained \
    [--chat_template] [--validation=200] [--max_test=N]

Each candidate prompt (`CANDIDATES`) ranks the options of `--validation` validation
questions; the best by accuracy then evaluates the test split (generation with the
vanilla prompt, and rank classification), writing `<out>/test/report.json` and the
per-question predictions, and `<out>/choice.json` (every candidate's validation
accuracy and the one chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from tinythinker_jax import compute as compute_lib  # noqa: E402
from tinythinker_jax import student as student_lib  # noqa: E402
from tinythinker_jax.data import datasets  # noqa: E402
from tinythinker_jax.reasoning import ranking  # noqa: E402
from tinythinker_jax.reasoning.formats import Format  # noqa: E402
from tinythinker_jax.stages import evaluate, infer  # noqa: E402

CANDIDATES = {
    "cloze": ranking.RankSettings("Question: {question}\nAnswer:", " {option}"),
    "cloze_no_space": ranking.RankSettings("Question: {question}\nAnswer:", "{option}"),
    "bare": ranking.RankSettings("{question}", "{option}"),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--dataset_path", default="")
  parser.add_argument("--out", required=True)
  parser.add_argument("--chat_template", action="store_true")
  parser.add_argument("--validation", type=int, default=200)
  parser.add_argument("--max_test", type=int, default=None)
  parser.add_argument("--split_seed", type=int, default=0)
  parser.add_argument("--max_decode_length", type=int, default=48)
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args()
  settings = student_lib.StudentSettings(batch_size=args.batch_size, max_input_length=256,
                                         max_decode_length=args.max_decode_length,
                                         chat_template=args.chat_template)
  model = student_lib.build(args.model, settings=settings)
  validation, _ = datasets.load_split(args.dataset, args.dataset_path, "validation",
                                      args.split_seed, args.validation)
  choice = {"model": args.model, "chat_template": args.chat_template,
            "validation_questions": len(validation), "candidates": {}}
  for name, candidate in CANDIDATES.items():
    start = time.time()
    records = infer.rank(model, validation, output_dir=os.path.join(args.out, "validation"),
                         settings=candidate, name=f"rank_{name}", progress=True)
    summary = ranking.summarize(records, candidate)
    summary["seconds"] = round(time.time() - start, 1)
    choice["candidates"][name] = summary
    print(name, summary, flush=True)
  best = max(CANDIDATES, key=lambda n: (choice["candidates"][n]["accuracy"], n == "cloze"))
  choice["chosen"] = best
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "choice.json"), "w") as f:
    json.dump(choice, f, indent=1)
  test, answer_type = datasets.load_split(args.dataset, args.dataset_path, "test",
                                          args.split_seed, args.max_test)
  start = time.time()
  report = evaluate.evaluate(
      model, test, fmt=Format.VANILLA, answer_type=answer_type,
      output_dir=os.path.join(args.out, "test"), num_runs=0, progress=True,
      describe={"model": args.model, "dataset": args.dataset, "split": "test",
                "compute": dict(compute_lib.Compute().to_json(), stage_seconds=0.0)},
      rank=CANDIDATES[best])
  report["seconds"] = round(time.time() - start, 1)
  print(json.dumps({k: report.get(k) for k in ("greedy", "rank", "majority_answer",
                                               "seconds")}, indent=1))


if __name__ == "__main__":
  main()
