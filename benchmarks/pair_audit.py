"""Are self-reflection's chosen chains right for the right reasons? (Coin Flip runs.)

Self-reflection and rejection-sampling fine-tuning both trust a sampled chain
whose final answer is the gold one. On Coin Flip the recall step can be
checked exactly (the number of people who flip), so this reads a pipeline run
folder's first-round samples and prints, over the sampled chains of the
questions that made pairs: how often the recall is right, how often the answer
is, how often the recall is right when the answer is, and the share of chosen
and rejected recalls in the recall pairs that count the flips right.

  python benchmarks/pair_audit.py runs/evidence/noisy/seed_*
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
from typing import Optional

_FLIPS = re.compile(r"\b\w+ flips the coin\.")
_RECALL = re.compile(r"flipped (\d+) times")


def true_flips(prompt: str) -> int:
  """The number of flips in a Coin Flip question (its first line)."""
  return len(_FLIPS.findall(prompt.split("\n")[0]))


def recalled_flips(text: Optional[str]) -> Optional[int]:
  match = _RECALL.search(text or "")
  return int(match.group(1)) if match else None


def audit(run_dir: str, round_: int = 1) -> dict[str, float]:
  samples = os.path.join(run_dir, "reflect", f"round_{round_}", "samples")
  with open(os.path.join(samples, "pairs.jsonl")) as f:
    pairs = [json.loads(line) for line in f]
  prompts = {p["example_id"]: p["prompt"] for p in pairs}
  counts: collections.Counter = collections.Counter()
  with open(os.path.join(samples, "chains.jsonl")) as f:
    for line in f:
      question = json.loads(line)
      if question["id"] not in prompts:
        continue
      flips = true_flips(prompts[question["id"]])
      for chain in question["chains"]:
        counts[(recalled_flips(chain.get("recall")) == flips,
                chain.get("answer") == question["gold"])] += 1
  recall_pairs = [p for p in pairs if p["stage"] == "recall"]
  total = sum(counts.values())
  right_answers = counts[(True, True)] + counts[(False, True)]
  return {
      "chains": total,
      "recall_right": sum(v for (r, _), v in counts.items() if r) / max(total, 1),
      "answer_right": right_answers / max(total, 1),
      "recall_right_given_answer_right": counts[(True, True)] / max(right_answers, 1),
      "recall_pairs": len(recall_pairs),
      "chosen_recall_right": sum(recalled_flips(p["chosen"]) == true_flips(p["prompt"])
                                 for p in recall_pairs) / max(len(recall_pairs), 1),
      "rejected_recall_right": sum(recalled_flips(p["rejected"]) == true_flips(p["prompt"])
                                   for p in recall_pairs) / max(len(recall_pairs), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="pipeline run folders (Coin Flip tasks)")
  parser.add_argument("--round", type=int, default=1)
  args = parser.parse_args()
  print("| run | chains | recall right | answer right | recall right when the answer is "
        "| recall pairs | chosen recall right | rejected recall right |")
  print("|---|---|---|---|---|---|---|---|")
  for run in args.runs:
    if not os.path.isdir(os.path.join(run, "reflect", f"round_{args.round}", "samples")):
      continue  # (not a run folder, or no samples for that round)
    a = audit(run, args.round)
    print(f"| {run} | {a['chains']} | {a['recall_right']:.1%} | {a['answer_right']:.1%} | "
          f"{a['recall_right_given_answer_right']:.1%} | {a['recall_pairs']} | "
          f"{a['chosen_recall_right']:.1%} | {a['rejected_recall_right']:.1%} |")


if __name__ == "__main__":
  main()
