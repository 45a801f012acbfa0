"""The untrained model's row: a pretrained (instruct) model evaluated with no training,
its rank-classification prompt chosen on validation questions, never on test.

  python benchmarks/untrained_baseline.py --model=<HF folder or GGUF> --dataset=csqa \
    --dataset_path=<Distilling Step-by-Step's cqa/> --out=runs/real/csqa/untrained \
    [--chat_template] [--validation=200] [--max_test=N] [--few_shot=K]

Each candidate prompt (`CANDIDATES`) ranks the options of `--validation` validation
questions; the best by accuracy then evaluates the test split (generation with the
vanilla prompt, and rank classification), writing `<out>/test/report.json` and the
per-question predictions, and `<out>/summary.json` (the command, every candidate's
validation accuracy and the one chosen, the test figures). Tasks without options
(SVAMP) are generated only. `--few_shot=K`: K solved training questions, drawn with
`--few_shot_seed`, written before every prompt (`reasoning.few_shot`).
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
from tinythinker_jax.reasoning import few_shot, ranking  # noqa: E402
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
  parser.add_argument("--few_shot", type=int, default=0,
                      help="solved training questions written before each question")
  parser.add_argument("--few_shot_seed", type=int, default=0)
  args = parser.parse_args()
  settings = student_lib.StudentSettings(batch_size=args.batch_size, max_input_length=2048,
                                         max_decode_length=args.max_decode_length,
                                         chat_template=args.chat_template)
  model = student_lib.build(args.model, settings=settings)
  exemplars = []
  if args.few_shot:
    train, _ = datasets.load_split(args.dataset, args.dataset_path, "train", args.split_seed)
    exemplars = few_shot.draw(train, args.few_shot, args.few_shot_seed)
  validation, _ = datasets.load_split(args.dataset, args.dataset_path, "validation",
                                      args.split_seed, args.validation)
  multiple_choice = all(e.choices for e in validation)
  summary = {"model": args.model, "dataset": args.dataset, "chat_template": args.chat_template,
             "command": " ".join(["python"] + sys.argv), "few_shot": args.few_shot,
             "exemplars": [e.id for e in exemplars], "max_decode_length": args.max_decode_length}
  rank = None
  if multiple_choice:
    choice = {"validation_questions": len(validation), "candidates": {}}
    for name, candidate in CANDIDATES.items():
      candidate = few_shot.rank_settings(exemplars, candidate)  # (no exemplars: itself)
      start = time.time()
      records = infer.rank(model, validation, output_dir=os.path.join(args.out, "validation"),
                           settings=candidate, name=f"rank_{name}", progress=True)
      result = ranking.summarize(records, candidate)
      result["seconds"] = round(time.time() - start, 1)
      choice["candidates"][name] = result
      print(name, {k: v for k, v in result.items() if k != "prompt"}, flush=True)
    best = max(CANDIDATES, key=lambda n: (choice["candidates"][n]["accuracy"], n == "cloze"))
    choice["chosen"] = best
    summary["validation_rank_classification"] = choice
    rank = few_shot.rank_settings(exemplars, CANDIDATES[best])
  test, answer_type = datasets.load_split(args.dataset, args.dataset_path, "test",
                                          args.split_seed, args.max_test)
  start = time.time()
  describe = {"model": args.model, "dataset": args.dataset, "split": "test",
              "compute": dict(compute_lib.Compute().to_json(), stage_seconds=0.0)}
  if exemplars:
    # The exemplars go before the vanilla prompt; ranking writes its own before
    # its cloze prompt, so it reads the test questions as they are.
    report = evaluate.evaluate(
        model, few_shot.with_block(test, few_shot.generation_block(exemplars)),
        fmt=Format.VANILLA, answer_type=answer_type, output_dir=os.path.join(args.out, "test"),
        num_runs=0, progress=True, describe=describe)
    if rank is not None:
      records = infer.rank(model, test, output_dir=os.path.join(args.out, "test"),
                           settings=rank, name="rank", progress=True)
      report["rank"] = ranking.summarize(records, rank)
  else:
    report = evaluate.evaluate(model, test, fmt=Format.VANILLA, answer_type=answer_type,
                               output_dir=os.path.join(args.out, "test"), num_runs=0,
                               progress=True, describe=describe, rank=rank)
  summary.update({"questions": len(test), "seconds": round(time.time() - start, 1),
                  "greedy": report["greedy"], "majority_answer": report.get("majority_answer"),
                  "truncated_inputs": model.truncated_inputs})
  if report.get("rank"):
    summary["rank"] = {k: v for k, v in report["rank"].items() if k != "prompt"}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(json.dumps({k: summary.get(k) for k in ("greedy", "rank", "majority_answer",
                                                "seconds")}, indent=1))


if __name__ == "__main__":
  main()
