"""Per-seed table of a self-reflection experiment's pipeline runs (RESULTS.md).

Reads each run folder's `pipeline.json`, `evaluate/*/report.json` and
`reflect/reflect_state.json` (written by `tinythinker pipeline`), and prints a
markdown table: phase-1 and post-reflection test accuracy, the best round,
pairs and validation accuracy per round, then mean +- std over the runs.

  python benchmarks/reflect_lift.py runs/coin_flip_longer/seed_*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics


def _json(path: str):
  with open(path) as f:
    return json.load(f)


def row(run_dir: str) -> dict:
  phase1 = _json(os.path.join(run_dir, "evaluate", "tinythinker", "report.json"))
  after = _json(os.path.join(run_dir, "evaluate", "tinythinker_reflected", "report.json"))
  state = _json(os.path.join(run_dir, "reflect", "reflect_state.json"))
  return {
      "run": os.path.basename(os.path.normpath(run_dir)),
      "phase1_test": phase1["greedy"]["accuracy"],
      "after_test": after["greedy"]["accuracy"],
      "phase1_validation": state["initial"]["validation_accuracy"],
      "best_round": state["best"]["round"],
      "best_validation": state["best"]["validation_accuracy"],
      "pairs": [r["samples"]["pairs"] for r in state["rounds"]],
      "round_validation": [r.get("validation_accuracy") for r in state["rounds"]],
  }


def _mean_std(values) -> str:
  values = list(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(rows: list[dict]) -> str:
  lines = ["| run | phase-1 test | best round | test after | lift | validation per round "
           "(phase 1 first) | pairs per round |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    vals = " / ".join(f"{100 * v:.1f}" if v is not None else "–"
                      for v in [r["phase1_validation"]] + r["round_validation"])
    lines.append(f"| {r['run']} | {100 * r['phase1_test']:.1f} | {r['best_round']} | "
                 f"{100 * r['after_test']:.1f} | {100 * (r['after_test'] - r['phase1_test']):+.1f}"
                 f" | {vals} | {' / '.join(map(str, r['pairs']))} |")
  lines.append(f"| mean ± std | {_mean_std(r['phase1_test'] for r in rows)} | | "
               f"{_mean_std(r['after_test'] for r in rows)} | "
               f"{_mean_std(r['after_test'] - r['phase1_test'] for r in rows)} | | |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("run_dirs", nargs="+")
  args = parser.parse_args(argv)
  print(table([row(d) for d in args.run_dirs]))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
