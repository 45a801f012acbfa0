"""benchmarks/results_table.py and pair_audit.py on hand-made run folders."""

import json

import pytest
from scipy import stats

from benchmarks import pair_audit, results_table

# test accuracy of each student in two seeds of one task
ACCURACY = {"vanilla": (0.50, 0.52), "finetune_cot": (0.90, 0.80),
            "tinythinker": (0.60, 0.70), "tinythinker_continued": (0.75, 0.80),
            "tinythinker_rft": (0.62, 0.70), "tinythinker_reflected": (0.65, 0.74)}


def _write(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


def _run(root, seed):
  run = root / "task_a" / f"seed_{seed}"
  _write(run / "pipeline.json", {"settings": {}, "stages": {}})
  for name, values in ACCURACY.items():
    _write(run / "evaluate" / name / "report.json",
           {"greedy": {"accuracy": values[seed]},
            "compute": {"total_flops": 1e12 * (seed + 1), "train_steps": 100 + seed,
                        "stage_seconds": 60.0}})
  for name in ("finetune_cot", "tinythinker"):  # An extra (out-of-distribution) test set.
    _write(run / "evaluate" / name / "five_objects" / "report.json",
           {"greedy": {"accuracy": 0.2 + 0.1 * seed}})
  diagnosis = {"own_chain": 0.3 + 0.1 * seed, "from_teacher_recall": 0.4,
               "from_teacher_recall_and_analyses": 1.0, "recall_matches_teacher": 0.5,
               "analysis_matches_teacher": {"gold_option": 0.0, "other_options": 0.9}}
  report = json.loads((run / "evaluate" / "tinythinker" / "report.json").read_text())
  if seed == 0:  # in the evaluation report; seed 1's diagnosed afterwards
    _write(run / "evaluate" / "tinythinker" / "report.json",
           dict(report, stage_diagnosis=diagnosis))
  else:
    _write(run / "diagnose" / "tinythinker" / "report.json", {"stage_diagnosis": diagnosis})
  # Per-question greedy predictions (100 questions) of two students, matching
  # their accuracies: self-reflection right on q0..q64 / q0..q73, continued on
  # q10..q84 / q0..q79; gold 'A' on q0..q59, else 'B'.
  right = {"tinythinker_reflected": (range(0, 65), range(0, 74)),
           "tinythinker_continued": (range(10, 85), range(0, 80))}
  for name, ranges in right.items():
    rows = [{"id": f"q{i}", "correct": i in ranges[seed], "gold": "A" if i < 60 else "B"}
            for i in range(100)]
    path = run / "evaluate" / name / "greedy" / "greedy-00000-of-00001.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  _write(run / "students" / "tinythinker" / "compute.json",
         {"train_steps": 900, "stopped_early": 900})
  _write(run / "students" / "tinythinker" / "best.json", {"step": 400, "value": 0.6})
  return str(run)


def test_table_means_and_paired_differences(tmp_path):
  runs = [results_table.read_run(_run(tmp_path, s)) for s in (0, 1)]
  text = results_table.tables(runs)
  rows = {line.split(" | ")[1]: line
          for line in text.split("## Paired comparisons")[0].splitlines()
          if line.startswith("| task_a |")}
  label = dict(results_table.METHODS)
  # Fine-tune-CoT: 90 and 80 -> 85.0, t interval 85 ± 12.706 x 7.07 / sqrt(2) =
  # [21.5, 148.5]; 1.5 TFLOP mean; 100.5 steps; the extra set's column (20 and 30)
  assert rows[label["finetune_cot"]].startswith(
      f"| task_a | {label['finetune_cot']} | 2 | 85.0 [21.5, 148.5] | 25.0 [-38.5, 88.5] "
      "| 1.5 T | 100 |")
  assert "| five_objects (%) |" in text
  assert rows[label["vanilla"]].startswith(
      f"| task_a | {label['vanilla']} | 2 | 51.0 [38.3, 63.7] | – |")
  # The majority answer from the per-question golds: 'A' on 60 of 100.
  assert "| task_a | majority answer (always 'A') | – | 60.0 |" in text
  # Six comparisons (Fine-tune-CoT against vanilla among them), Holm-adjusted.
  assert "6 comparisons;" in text
  diffs = {tuple(line.split(" | ")[1:3]): line.split(" | ")[3:] for line in text.splitlines()
           if line.startswith("| task_a |") and line.count(" | ") > 8}
  # self-reflection minus continued: -10 and -6 points -> -8.0 [-33.4, 17.4], the
  # paired t-test's p (scipy), McNemar on the pooled questions: 10 + 0 questions
  # only self-reflection got right against 20 + 6 only continued did.
  row = diffs[(label["tinythinker_reflected"], label["tinythinker_continued"])]
  assert row[:2] == ["2", "-8.0 [-33.4, 17.4]"]
  assert float(row[2]) == pytest.approx(
      stats.ttest_rel([0.65, 0.74], [0.75, 0.80]).pvalue, abs=5e-4)
  assert row[4] == f"10 vs 26, p = {stats.binomtest(10, 36, 0.5).pvalue:.3f}"
  # The bootstrap over seeds and questions: both seeds lose on 100 questions each,
  # so (nearly) every draw is below zero: a loss after Holm's adjustment (the t-test over
  # two seeds alone could not say so).
  interval, p_value = row[3].split(", p = ")
  assert interval.startswith("-8.0 [") and float(p_value.lstrip("< ")) < 0.01
  assert row[-1].rstrip(" |") == "a loss"
  # without per-question predictions: the t-test alone (+5 and +4 points)
  row = diffs[(label["tinythinker_reflected"], label["tinythinker"])]
  assert row[:2] == ["2", "4.5 [-1.9, 10.9]"] and row[3:5] == ["–", "–"]
  assert "| 900 (900) / 400, 60.0% |" in text
  # the stage diagnosis of both seeds (own chain 30 and 40 -> 35.0 ± 7.1)
  diagnosed = [line for line in text.split("## Where the staged chains go wrong")[1]
               .splitlines() if line.startswith("| task_a |")]
  assert diagnosed == [f"| task_a | {results_table.phase1_label(runs)} | 2 | 35.0 ± 7.1 | "
                       "40.0 ± 0.0 | 100.0 ± 0.0 | 50.0 ± 0.0 | 0.0 ± 0.0 | 90.0 ± 0.0 |"]


def test_pair_audit_checks_recalls_against_the_question(tmp_path):
  samples = tmp_path / "run" / "reflect" / "round_1" / "samples"
  samples.mkdir(parents=True)
  question = ("A coin is heads up. Ann flips the coin. Bo does not flip the coin. "
              "Cy flips the coin. Di flips the coin. Is the coin still heads up?")
  prompt = question + "\n(A) yes (B) no\nRecall:"
  pairs = [{"stage": "recall", "example_id": "q", "prompt": prompt,
            "chosen": "The coin is flipped 3 times.", "rejected": "The coin is flipped 2 times."},
           {"stage": "recall", "example_id": "q", "prompt": prompt,
            "chosen": "The coin is flipped 1 times.", "rejected": "The coin is flipped 4 times."},
           {"stage": "analyze", "example_id": "q", "prompt": prompt,
            "chosen": "x", "rejected": "y"}]
  (samples / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
  chains = [{"recall": "The coin is flipped 3 times.", "answer": "B"},  # right, right
            {"recall": "The coin is flipped 1 times.", "answer": "B"},  # wrong, right
            {"recall": "The coin is flipped 2 times.", "answer": "A"},  # wrong, wrong
            {"recall": None, "answer": None}]
  (samples / "chains.jsonl").write_text(
      json.dumps({"id": "q", "gold": "B", "chains": chains}) + "\n"
      + json.dumps({"id": "unpaired", "gold": "A", "chains": chains}) + "\n")
  assert pair_audit.true_flips(prompt) == 3
  audit = pair_audit.audit(str(tmp_path / "run"))
  assert audit == pytest.approx({
      "chains": 4, "recall_right": 0.25, "answer_right": 0.5,
      "recall_right_given_answer_right": 0.5, "recall_pairs": 2,
      "chosen_recall_right": 0.5, "rejected_recall_right": 0.0})


def test_phase1_row_names_its_protocol():
  annealed = {"settings": {"train_settings": {"early_stop_patience": 0, "train_steps": 1500}}}
  stopped = {"settings": {"train_settings": {"early_stop_patience": 5, "train_steps": 2000}}}
  assert results_table.phase1_label([annealed, annealed]) == (
      "TinyThinker phase 1 (annealed: cosine to zero over 1500 steps)")
  assert results_table.phase1_label([stopped]) == "TinyThinker phase 1 (early stopping)"
  assert results_table.phase1_label([annealed, stopped]).endswith("different protocols)")


def test_the_untrained_model_evaluated_once_serves_every_seed():
  """Its greedy answers do not depend on the seed (evaluate_untrained=False in
  the other seeds' runs): every seed pairs with the one evaluation."""
  untrained = {"test": 0.2, "rank": 0.5, "questions": {}}
  runs = [{"run": "r/task_b/seed_0", "students": {"untrained": untrained,
                                                  "vanilla": {"test": 0.3}}},
          {"run": "r/task_b/seed_1", "students": {"vanilla": {"test": 0.4}}},
          {"run": "r/task_c/seed_0", "students": {"vanilla": {"test": 0.5}}}]
  results_table.share_untrained(runs)
  assert runs[1]["students"]["untrained"] is untrained
  assert "untrained" not in runs[2]["students"]  # another task's is not shared


def test_an_untrained_evaluation_from_elsewhere_joins_every_run(tmp_path, monkeypatch,
                                                                 capsys):
  """`--untrained`: a run that did not evaluate the untrained model takes it from
  an evaluation folder (report.json and per-question greedy shards): its row
  (n = 1 evaluation serving both seeds) and its paired comparisons appear."""
  runs = [str(_run(tmp_path, s)) for s in (0, 1)]
  folder = tmp_path / "untrained" / "test"
  _write(folder / "report.json", {"greedy": {"accuracy": 0.2}, "rank": {"accuracy": 0.3}})
  rows = [{"id": f"q{i}", "correct": i < 20, "gold": "A" if i < 60 else "B"}
          for i in range(100)]
  (folder / "greedy").mkdir()
  (folder / "greedy" / "greedy-00000-of-00001.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  monkeypatch.setattr("sys.argv", ["results_table.py", *runs, f"--untrained={folder}"])
  results_table.main()
  text = capsys.readouterr().out
  label = dict(results_table.METHODS)["untrained"]
  row = [line for line in text.split("## Paired comparisons")[0].splitlines()
         if line.startswith(f"| task_a | {label} |")]
  assert len(row) == 1 and "| 1 (shared by 2 seeds) | 20.0 (n = 1) | 30.0 (n = 1) |" in row[0]
  assert f"| task_a | {dict(results_table.METHODS)['vanilla']} | {label} | 2 |" in text
  monkeypatch.setattr("sys.argv", ["results_table.py", *runs,
                                   f"--untrained={tmp_path / 'nowhere'}"])
  with pytest.raises(SystemExit, match="no report.json"):
    results_table.main()


def _rank_student(run, name, right, seed):
  """A student's report and per-question rank shard: right on the questions in `right`."""
  rows = [{"id": f"q{i}", "gold": "A", "answer": "A" if i in right else "B",
           "correct": i in right} for i in range(50)]
  _write(run / "evaluate" / name / "report.json",
         {"greedy": {"accuracy": 0.2}, "rank": {"accuracy": len(right) / 50}})
  path = run / "evaluate" / name / "rank" / "rank-00000-of-00001.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (run / "config.gin").write_text(f"RUN_DIR = '{run}'\nSEED = {seed}\n")
  _write(run / "pipeline.json", {"settings": {}, "stages": {}})


def test_rank_classification_pairs_per_question_across_folders_of_one_seed(tmp_path):
  """Two seeds; each seed's students trained in two folders (step_by_step in
  `seed_N`, vanilla in `seed_N_vanilla`): the folders of a seed become one run,
  and rank classification gets its own paired comparisons, checked against
  scipy (McNemar's exact test: a binomial test on the discordant questions;
  the t interval over the two seeds)."""
  right = {("step_by_step", 0): range(0, 30), ("vanilla", 0): range(5, 32),
           ("step_by_step", 1): range(0, 28), ("vanilla", 1): range(10, 30)}
  folders = []
  for seed in (0, 1):
    for name, suffix in (("step_by_step", ""), ("vanilla", "_vanilla")):
      run = tmp_path / "task_r" / f"seed_{seed}{suffix}"
      _rank_student(run, name, right[name, seed], seed)
      folders.append(str(run))
  runs = results_table.merge_seeds([results_table.read_run(f) for f in folders])
  assert len(runs) == 2 and set(runs[0]["students"]) == {"step_by_step", "vanilla"}
  text = results_table.tables(runs)
  rank = text.split("### Rank classification")[1]
  assert "1 comparisons;" in rank
  (row,) = [line for line in rank.splitlines() if line.startswith("| task_r |")]
  cells = [c.strip() for c in row.split("|")[1:-1]]
  # seed 0: 60% - 54%; seed 1: 56% - 40% -> +6, +16 points.
  t = stats.t.ppf(0.975, 1) * stats.tstd([6, 16]) / 2 ** 0.5
  assert cells[3] == "2" and cells[4] == f"11.0 [{11 - t:.1f}, {11 + t:.1f}]"
  # Pooled discordant questions: only step_by_step right 5 + 10, only vanilla 2 + 2.
  assert cells[7] == f"15 vs 4, p = {stats.binomtest(15, 19, 0.5).pvalue:.3f}"
  # A student evaluated in two folders of one seed is an error, not a silent pick.
  _rank_student(tmp_path / "task_r" / "seed_0_again", "vanilla", range(3), 0)
  with pytest.raises(SystemExit, match="both evaluated"):
    results_table.merge_seeds([results_table.read_run(f) for f in
                               folders + [str(tmp_path / "task_r" / "seed_0_again")]])
