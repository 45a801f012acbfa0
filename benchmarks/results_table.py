"""RESULTS.md's table from pipeline run folders: task x method, mean ± std over seeds.

Each run folder is one `tinythinker pipeline` run (one task, one seed); runs
are grouped by their parent folder (the task), and folders of one task with the
same SEED (their config.gin's; say one trained some students, another the rest)
are read as one run:

  python benchmarks/results_table.py runs/evidence/*/seed_*

For every student it reads `evaluate/<student>/report.json` (greedy test
accuracy, the extra test sets, and `compute`: the model FLOPs the student
spent from a fresh start, with the wall seconds of the stages that made it),
and prints:

1. the results table: test accuracy, the mean over seeds with its 95% interval
   (Student's t, n - 1 degrees of freedom; a one-seed row says n = 1), the
   compute (model FLOPs, mean) and the wall time (minutes, mean) of each method,
   and the test set's majority answer (the floor: always giving the most common
   gold answer) read from the per-question predictions;
2. paired differences over the same seeds: self-reflection minus each
   baseline, and phase 1 continued minus Fine-tune-CoT (the two formats at the
   same compute): the mean with its 95% t interval and paired t-test over seeds,
   and where the per-question predictions are there
   (`evaluate/<student>/greedy/*.jsonl`) a paired bootstrap over seeds and
   questions and McNemar's exact test on the pooled questions. The verdict
   uses the bootstrap's p-value (else the t-test's), Holm-adjusted over the
   table's comparisons, whose number the table states
   (`tinythinker_jax.significance`); the same comparisons on rank
   classification (`evaluate/<student>/rank/*.jsonl`) as their own family;
3. what the self-reflection rounds did (pairs, sampled-chain accuracy, reward
   accuracy and margin of the last logged DPO step, the round kept), so that a
   missing gain can be read;
4. where the staged students' chains go wrong: each report's stage diagnosis
   (`reasoning/diagnosis.py`, on the validation questions' teacher
   rationales), mean over the seeds. Runs evaluated before the pipeline wrote
   it can be diagnosed afterwards with `tinythinker evaluate
   --gin.TEACHER_RECORDS=...` into `<run>/diagnose/<student>/`, read here too.

`--json` writes every number to a file as well.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tinythinker_jax import significance  # noqa: E402  pylint: disable=wrong-import-position

METHODS = [("untrained", "the pretrained model, untrained (zero-shot)"),
           ("vanilla", "vanilla (answer only)"),
           ("finetune_cot", "Fine-tune-CoT"),
           ("finetune_cot_decoder", "Fine-tune-CoT, decoder-only format"),
           ("step_by_step", "Distilling Step-by-Step"),
           ("tinythinker", "TinyThinker phase 1 (early stopping)"),
           ("tinythinker_continued", "phase 1 continued (same compute as + self-reflection)"),
           ("tinythinker_rft", "+ rejection-sampling fine-tuning (same samples, same compute)"),
           ("tinythinker_reflected", "+ self-reflection (DPO/RPO)"),
           ("vanilla_distilled", "vanilla, distilled from the teacher's distribution"),
           ("finetune_cot_distilled", "Fine-tune-CoT, distilled from the teacher's "
            "distribution"),
           ("finetune_cot_decoder_distilled", "Fine-tune-CoT (decoder-only), distilled "
            "from the teacher's distribution")]
# Paired comparisons (A minus B): self-reflection against each baseline, the
# three-stage format against Fine-tune-CoT at the same compute, and on real tasks
# the rationale methods against answer-only training and the untrained model.
COMPARISONS = [("tinythinker_reflected", b) for b in
               ("tinythinker", "tinythinker_continued", "tinythinker_rft", "finetune_cot")
               ] + [("tinythinker_continued", "finetune_cot")] + [
    # The real-task comparisons: each rationale method against answer-only training
    # and against each other, and every trained student against the model untrained.
    ("finetune_cot_decoder", "vanilla"), ("finetune_cot", "vanilla"),
    ("step_by_step", "vanilla"),
    ("step_by_step", "finetune_cot_decoder"), ("step_by_step", "finetune_cot"),
    ("vanilla", "untrained"), ("finetune_cot_decoder", "untrained"),
    ("step_by_step", "untrained")] + [
    # Distillation from a teacher's distribution against the same student trained on
    # the text alone, at the same compute (DISTILL_TEACHER).
    (f"{name}_distilled", name) for name in ("vanilla", "finetune_cot",
                                             "finetune_cot_decoder")]


def _json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _last_row(path: str, key: str) -> dict:
  """The last metrics.jsonl row that has `key`."""
  last = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        if key in row:
          last = row
  return last


def _extra_sets(student_dir: str) -> dict[str, float]:
  """Greedy accuracy on each extra test set (`evaluate/<student>/<set>/report.json`)."""
  out = {}
  if os.path.isdir(student_dir):
    for name in sorted(os.listdir(student_dir)):
      report = _json(os.path.join(student_dir, name, "report.json"))
      if report is not None and "greedy" in report:
        out[name] = report["greedy"]["accuracy"]
  return out


def per_question(student_dir: str, kind: str = "greedy") -> dict[str, dict[str, Any]]:
  """{question id: {correct, gold}} from a student's per-question predictions
  (its `greedy/*.jsonl` or `rank/*.jsonl` shards), or {} when they are not there."""
  out: dict[str, dict[str, Any]] = {}
  folder = os.path.join(student_dir, kind)
  if not os.path.isdir(folder):
    return out
  for name in sorted(os.listdir(folder)):
    if name.endswith(".jsonl"):
      with open(os.path.join(folder, name)) as f:
        for line in f:
          if line.strip():
            row = json.loads(line)
            out[str(row["id"])] = {"correct": bool(row["correct"]), "gold": row.get("gold")}
  return out


def read_student(folder: str, compute: Optional[dict] = None) -> Optional[dict[str, Any]]:
  """One evaluated student: a folder holding `report.json` and its per-question
  `greedy/` shards (a pipeline's `evaluate/<student>/`, or the test folder that
  `benchmarks/untrained_baseline.py` writes); None where there is no report."""
  report = _json(os.path.join(folder, "report.json"))
  if report is None:
    return None
  if "compute" not in report:  # (runs whose report.json predates it: pipeline.json)
    report["compute"] = compute
  return {"test": report["greedy"]["accuracy"],
          "rank": (report.get("rank") or {}).get("accuracy"),
          "extra": _extra_sets(folder),
          "flops": (report.get("compute") or {}).get("total_flops"),
          "train_steps": (report.get("compute") or {}).get("train_steps"),
          "seconds": (report.get("compute") or {}).get("stage_seconds"),
          "questions": per_question(folder),
          "rank_questions": per_question(folder, "rank"),
          "diagnosis": report.get("stage_diagnosis")}


def read_run(run_dir: str) -> dict[str, Any]:
  """Accuracy, extra test sets and compute of every evaluated student of a run."""
  out: dict[str, Any] = {"run": run_dir, "seed": run_seed(run_dir), "students": {}}
  manifest = _json(os.path.join(run_dir, "pipeline.json")) or {}
  out["settings"] = manifest.get("settings", {})
  recorded = (manifest.get("stages", {}).get("evaluate", {}).get("outputs", {})
              .get("reports", {}))
  for name, _ in METHODS:
    student = read_student(os.path.join(run_dir, "evaluate", name),
                           recorded.get(name, {}).get("compute"))
    if student is None:
      continue
    if not student["diagnosis"]:
      student["diagnosis"] = (_json(os.path.join(run_dir, "diagnose", name, "report.json"))
                              or {}).get("stage_diagnosis")
    out["students"][name] = student
  phase1 = _json(os.path.join(run_dir, "students", "tinythinker", "compute.json")) or {}
  out["phase1_steps"] = phase1.get("train_steps")
  out["phase1_stopped_early"] = phase1.get("stopped_early")
  best = _json(os.path.join(run_dir, "students", "tinythinker", "best.json")) or {}
  out["phase1_best"] = (best.get("step"), best.get("value"))
  rounds = []
  for kind in ("reflect", "rft"):
    state = _json(os.path.join(run_dir, kind, "reflect_state.json"))
    if not state:
      continue
    for r in state["rounds"]:
      row = {"kind": kind, "round": r["round"], "pairs": r["samples"]["pairs"],
             "sampled": r["samples"].get("sampled_chain_accuracy"),
             "validation": r.get("validation_accuracy"), "skipped": r.get("skipped"),
             "best_step": r.get("best_step")}
      if kind == "reflect" and r.get("model_dir"):
        last = _last_row(os.path.join(r["model_dir"], "metrics.jsonl"), "train/accuracy")
        row.update(reward_accuracy=last.get("train/accuracy"),
                   chosen=last.get("train/chosen_reward"),
                   rejected=last.get("train/rejected_reward"))
      if kind == "rft" and r.get("model_dir"):
        records = os.path.join(os.path.dirname(r["model_dir"]), "rationales")
        row["chains"] = sum(
            sum(1 for _ in open(os.path.join(d, f)))
            for d, _, files in os.walk(records) for f in files if f == "records.jsonl")
      rounds.append(row)
    out[f"{kind}_initial"] = state["initial"]["validation_accuracy"]
    out[f"{kind}_best_round"] = state["best"]["round"]
  out["rounds"] = rounds
  return out


def run_seed(run_dir: str) -> Optional[int]:
  """The run's SEED, from the config.gin the pipeline wrote (None without one)."""
  path = os.path.join(run_dir, "config.gin")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    for line in f:
      if line.startswith("SEED = "):
        return int(line.split("=", 1)[1])
  return None


def merge_seeds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Runs of one task and one seed in several folders (say `seed_1` trained one
  student and `seed_1_vanilla` another) become one run, so that their students
  pair question by question; a student in two folders of one seed is an error."""
  merged: list[dict[str, Any]] = []
  by_key: dict[tuple, dict[str, Any]] = {}
  for run in runs:
    seed = run.get("seed")
    key = (_task(run), seed)
    if seed is None or key not in by_key:
      merged.append(run)
      if seed is not None:
        by_key[key] = run
      continue
    first = by_key[key]
    twice = sorted(set(first["students"]) & set(run["students"]))
    if twice:
      sys.exit(f"{run['run']} and {first['run']} (seed {seed}) both evaluated {twice}")
    first["students"].update(run["students"])
    first.setdefault("merged", []).append(run["run"])
    for k in ("phase1_steps", "phase1_stopped_early", "phase1_best", "rounds"):
      if not first.get(k) and run.get(k):
        first[k] = run[k]
  return merged


def share_untrained(runs: list[dict[str, Any]]) -> None:
  """The untrained model's greedy answers do not depend on the seed: a run of a
  task without its own evaluation of it (`evaluate_untrained=False`) takes
  another seed's, so that every seed's trained students pair with it."""
  by_task: dict[str, dict] = {}
  for run in runs:
    if "untrained" in run["students"]:
      by_task.setdefault(_task(run), run["students"]["untrained"])
  for run in runs:
    if "untrained" not in run["students"] and _task(run) in by_task:
      run["students"]["untrained"] = by_task[_task(run)]


def _task(run: dict[str, Any]) -> str:
  return os.path.basename(os.path.dirname(os.path.normpath(run["run"])))


def phase1_label(task_runs: list[dict[str, Any]]) -> str:
  """Phase 1's row label: how its runs stopped (early stopping, or a schedule
  that decays to zero over its steps)."""
  patience = {(r["settings"].get("train_settings") or {}).get("early_stop_patience")
              for r in task_runs}
  steps = {(r["settings"].get("train_settings") or {}).get("train_steps")
           for r in task_runs}
  if patience == {0} and len(steps) == 1 and None not in steps:
    return f"TinyThinker phase 1 (annealed: cosine to zero over {steps.pop()} steps)"
  if 0 in patience:
    return "TinyThinker phase 1 (runs of different protocols)"
  return dict(METHODS)["tinythinker"]


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
  if not values:
    return "–"
  mean = statistics.mean(values) * scale
  if len(values) == 1:
    return f"{mean:.{digits}f} (n = 1)"
  std = statistics.stdev(values) * scale
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(values: list[float]) -> str:
  """The mean over seeds with its 95% t interval ('(n = 1)' for one seed)."""
  return significance.t_interval(values).format() if values else "–"


def _flops(value: Optional[float]) -> str:
  if not value:
    return "–"
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9)):
    if value >= scale:
      return f"{value / scale:.3g} {prefix}"
  return f"{value:.3g}"


def tables(runs: list[dict[str, Any]]) -> str:
  by_task: dict[str, list[dict]] = collections.defaultdict(list)
  for run in runs:
    by_task[os.path.basename(os.path.dirname(os.path.normpath(run["run"])))].append(run)
  extra_sets = sorted({k for run in runs for s in run["students"].values()
                       for k in s["extra"]})
  ranked = any(s.get("rank") is not None for run in runs for s in run["students"].values())
  head = (["task", "method", "seeds", "test accuracy (%, mean [95% CI])"] +
          (["rank classification (%)"] if ranked else []) + [
              f"{k} (%)" for k in extra_sets] + ["model FLOPs", "train steps", "wall (min)"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  comparisons = []  # (task, a, b, interval over seeds, bootstrap or None, McNemar or None)
  rank_comparisons = []  # the same on rank classification (its own Holm family)
  for task, task_runs in sorted(by_task.items()):
    labels = dict(METHODS, tinythinker=phase1_label(task_runs))
    majority = majority_row(task, task_runs, len(head) - 4)
    if majority:
      lines.append(majority)
    for name, _ in METHODS:
      label = labels[name]
      rows = [r["students"][name] for r in task_runs if name in r["students"]]
      if not rows:
        continue
      seeds = str(len(rows))
      if len(rows) > 1 and len({id(r) for r in rows}) == 1:
        # One evaluation that every seed shares (the untrained model): n = 1.
        seeds, rows = f"1 (shared by {len(rows)} seeds)", rows[:1]
      cells = [task, label, seeds, _interval([r["test"] for r in rows])]
      if ranked:
        cells.append(_interval([r["rank"] for r in rows if r.get("rank") is not None]))
      cells += [_interval([r["extra"][k] for r in rows if k in r["extra"]])
                for k in extra_sets]
      flops = [r["flops"] for r in rows if r["flops"]]
      steps = [r["train_steps"] for r in rows if r["train_steps"] is not None]
      seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
      cells += [_flops(statistics.mean(flops)) if flops else "–",
                f"{statistics.mean(steps):.0f}" if steps else "–",
                f"{statistics.mean(seconds) / 60:.1f}" if seconds else "–"]
      lines.append("| " + " | ".join(cells) + " |")
    for a, b in COMPARISONS:
      both = [r for r in task_runs if a in r["students"] and b in r["students"]]
      if not both:
        continue
      comparisons.append((task, labels[a], labels[b], *paired(both, a, b)))
      both = [r for r in both if r["students"][a].get("rank") is not None
              and r["students"][b].get("rank") is not None]
      if both:
        rank_comparisons.append((task, labels[a], labels[b], *paired(both, a, b, "rank")))
  diffs = comparison_rows(comparisons)
  if rank_comparisons:
    diffs += ["", "### Rank classification", "", *comparison_rows(rank_comparisons)]
  rounds = ["| task | seed run | phase 1: steps (stopped early at) / best step, "
            "validation | rounds (pairs; sampled-chain accuracy; reward accuracy; "
            "chosen / rejected reward; validation) | kept round | RFT rounds (chains; "
            "validation) |", "|---|---|---|---|---|---|"]
  for task, task_runs in sorted(by_task.items()):
    for run in task_runs:
      if run["phase1_steps"] is None and not run["rounds"]:
        continue  # no TinyThinker student in this run
      sr = [r for r in run["rounds"] if r["kind"] == "reflect"]
      rft = [r for r in run["rounds"] if r["kind"] == "rft"]

      def fmt(value, pattern="{:.2f}"):
        return "–" if value is None else pattern.format(value)
      sr_text = "; ".join(
          f"r{r['round']}: {r['pairs']} pairs, sampled {fmt(r['sampled'], '{:.0%}')}, "
          f"reward acc {fmt(r.get('reward_accuracy'))}, {fmt(r.get('chosen'))} / "
          f"{fmt(r.get('rejected'))}, val {fmt(r['validation'], '{:.1%}')}"
          for r in sr) or "–"
      rft_text = "; ".join(f"r{r['round']}: {r.get('chains', '–')} chains, val "
                           f"{fmt(r['validation'], '{:.1%}')}" for r in rft) or "–"
      best_step, best_value = run["phase1_best"]
      rounds.append(
          f"| {task} | {os.path.basename(os.path.normpath(run['run']))} | "
          f"{run['phase1_steps']} ({run['phase1_stopped_early'] or 'no'}) / {best_step}, "
          f"{fmt(best_value, '{:.1%}')} | {sr_text} | {run.get('reflect_best_round', '–')} "
          f"| {rft_text} |")
  diagnosis = diagnosis_rows(by_task)
  return "\n".join(["## Results", "", *lines, "", "## Paired comparisons", "", *diffs] +
                   (["", "## What the rounds did", "", *rounds] if len(rounds) > 2 else []) +
                   (["", "## Where the staged chains go wrong (validation questions, "
                     "teacher-forced stages)", "", *diagnosis] if diagnosis else []))


def majority_row(task: str, task_runs: list[dict[str, Any]], trailing: int) -> str:
  """The test set's majority answer as a row (from any student's per-question
  predictions), or '' when none were kept."""
  for run in task_runs:
    for student in run["students"].values():
      golds = [q["gold"] for q in student["questions"].values() if q.get("gold") is not None]
      if golds:
        answer, accuracy = significance.majority_baseline([str(g) for g in golds])
        return (f"| {task} | majority answer (always {answer!r}) | – | "
                f"{accuracy * 100:.1f} |" + " – |" * trailing)
  return ""


def paired(runs: list[dict[str, Any]], a: str, b: str, metric: str = "test"):
  """(t interval over seeds, paired bootstrap, McNemar) of student a minus b on
  `metric` ('test': greedy answers; 'rank': rank classification); the last two
  None without per-question predictions for every seed."""
  over_seeds = significance.paired_t([r["students"][a][metric] for r in runs],
                                     [r["students"][b][metric] for r in runs])
  questions = "questions" if metric == "test" else f"{metric}_questions"
  qa, qb = [], []
  for run in runs:
    x = run["students"][a].get(questions) or {}
    y = run["students"][b].get(questions) or {}
    ids = sorted(set(x) & set(y))
    if not ids or len(ids) != len(x) or len(ids) != len(y):
      return over_seeds, None, None
    qa.append([x[i]["correct"] for i in ids])
    qb.append([y[i]["correct"] for i in ids])
  return (over_seeds, significance.paired_bootstrap(qa, qb),
          significance.mcnemar_seeds(qa, qb))


def comparison_rows(comparisons: list[tuple]) -> list[str]:
  """The paired comparisons with Holm-adjusted p-values over all of them."""
  primary = [(boot or seeds).p_value for *_, seeds, boot, _ in comparisons]
  testable = [i for i, p in enumerate(primary) if p is not None]
  adjusted = dict(zip(testable, significance.holm([primary[i] for i in testable])))
  rows = [f"{len(testable)} comparisons; the verdict is the paired bootstrap's p-value "
          "over seeds and questions (the t-test's where per-question predictions are "
          "missing), Holm-adjusted over the comparisons, at 0.05.", "",
          "| task | student | minus | seeds | difference (points, mean [95% t CI]) | "
          "paired t p | bootstrap over seeds and questions [95% CI], p | McNemar (only "
          "student right vs only other right), p | adjusted p | verdict |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for i, (task, a, b, seeds, boot, mc) in enumerate(comparisons):
    rows.append(
        f"| {task} | {a} | {b} | {seeds.n} | {seeds.format()} | "
        f"{significance.format_p(seeds.p_value)} | "
        f"{boot.format() + ', ' + significance.p_phrase(boot.p_value) if boot else '–'} | "
        f"{mc.format() if mc else '–'} | {significance.format_p(adjusted.get(i))} | "
        f"{significance.verdict(boot or seeds, adjusted.get(i))} |")
  return rows


DIAGNOSIS_COLUMNS = [("own_chain", "own chain"),
                     ("from_teacher_recall", "from the teacher's recall"),
                     ("from_teacher_recall_and_analyses",
                      "from the teacher's recall and analyses"),
                     ("recall_matches_teacher", "recall = teacher's"),
                     ("gold_option", "analysis = teacher's, gold option"),
                     ("other_options", "analysis = teacher's, other options")]


def diagnosis_rows(by_task: dict[str, list[dict[str, Any]]]) -> list[str]:
  """Mean ± std over seeds of each staged student's stage diagnosis (%)."""
  rows = []
  for task, task_runs in sorted(by_task.items()):
    labels = dict(METHODS, tinythinker=phase1_label(task_runs))
    for name, _ in METHODS:
      found = [r["students"][name]["diagnosis"] for r in task_runs
               if name in r["students"] and r["students"][name].get("diagnosis")]
      if not found:
        continue
      cells = []
      for key, _ in DIAGNOSIS_COLUMNS:
        values = [d.get(key, (d.get("analysis_matches_teacher") or {}).get(key))
                  for d in found]
        cells.append(_mean_std([v for v in values if v is not None]))
      rows.append(f"| {task} | {labels[name]} | {len(found)} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  head = ["task", "method", "seeds"] + [label + " (%)" for _, label in DIAGNOSIS_COLUMNS]
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="pipeline run folders (task/seed_*)")
  parser.add_argument("--json", help="also write every number to this file")
  parser.add_argument("--untrained", default="",
                      help="the untrained model's evaluation folder (report.json and "
                           "greedy/, e.g. benchmarks/untrained_baseline.py's <out>/test) "
                           "for runs that did not evaluate it themselves")
  args = parser.parse_args()
  runs = merge_seeds([read_run(r) for r in args.runs
                      if os.path.exists(os.path.join(r, "pipeline.json"))])
  if args.untrained:
    untrained = read_student(args.untrained)
    if untrained is None:
      sys.exit(f"--untrained={args.untrained}: no report.json there")
    for run in runs:
      run["students"].setdefault("untrained", untrained)
  share_untrained(runs)
  print(tables(runs))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(runs, f, indent=1)


if __name__ == "__main__":
  main()
