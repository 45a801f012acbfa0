"""Distillation from a trained teacher's distribution, at equal compute, over seeds.

A teacher T5 (64 wide, 2+2 layers) is trained on a synthetic task's Fine-tune-CoT
records (the rule-based teacher's chains); then a narrower student with the same
word vocabulary is trained three ways, each with the same model-FLOPs budget
(the teacher's forward passes and the student's on-policy sampling counted
against it, `training.distillation`):

- `sft`: phase 1 on the records (the text the teacher learned from);
- `seq_kd`: sequence-level distillation (Kim and Rush 2016; Fine-tune-CoT's
  recipe): phase 1 on the teacher model's own greedy chains of the training
  questions, kept where its answer is right (generating them is a one-off data
  cost, like the records', not counted in the budget);
- `logit`: offline logit distillation on the same records (generalized JSD,
  beta 0.5, to the teacher's distribution at every completion token);
- `on_policy`: on-policy distillation (the student samples its own chains every
  step, the teacher scores each token; beta 0.5).

and, as GKD runs it (a student fine-tuned first), a second stage from each seed's
`sft` student with one more, equal budget (`--second_steps` supervised steps'
cost, at `--second_learning_rate`): `continued` (supervised), `continued_seq_kd`, `continued_logit`,
`continued_on_policy`, each compared with `continued`; and the two distillation
modes again for as many steps as `continued` took (`*_steps`: not
compute-matched, they spend more; a weaker signal per step or a dearer step).

Every student is evaluated greedily on the test split (per-question results kept
in `<out>/<mode>/seed_<s>/eval/`); `summary.json` and `table.md` give each
mode's mean with a 95% t-interval over seeds, the paired bootstrap and McNemar
test of each distillation mode against `sft`, the teacher's accuracy and the
majority answer. Every stage resumes (a finished student or evaluation is
skipped; training resumes from its checkpoints).

  python benchmarks/distill_experiment.py --out=runs/distill/coin_flip_long \
      --seeds=0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

from tinythinker_jax import compute, significance, student as student_lib
from tinythinker_jax.tokenizers import vocabularies
from tinythinker_jax.data import datasets
from tinythinker_jax.models import t5
from tinythinker_jax.reasoning.formats import Format
from tinythinker_jax.stages import evaluate, phase1
from tinythinker_jax.stages import infer as infer_lib
from tinythinker_jax.teacher import pipelines
from tinythinker_jax.training import distillation, recipe

# Each mode and the mode it is compared with (None: a reference).
MODES = {"sft": None, "seq_kd": "sft", "logit": "sft", "on_policy": "sft",
         "continued": None, "continued_seq_kd": "continued",
         "continued_logit": "continued", "continued_on_policy": "continued",
         # Not compute-matched: as many steps as `continued` (twice its FLOPs or more),
         # to tell a weaker signal per step from a dearer step.
         "continued_logit_steps": "continued", "continued_on_policy_steps": "continued"}
LENGTHS = {"inputs": 96, "targets": 64}


def t5_config(width: int, layers: int, heads: int) -> t5.T5Config:
  return t5.T5Config(vocab_size=256, emb_dim=width, num_heads=heads, head_dim=width // heads,
                     mlp_dim=4 * width, num_encoder_layers=layers, num_decoder_layers=layers,
                     mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                     dropout_rate=0.0, dtype="float32")


def teach(out: pathlib.Path, dataset: str, max_train: int) -> tuple[str, str]:
  """(records dir, vocabulary) of the rule-based teacher's Fine-tune-CoT chains."""
  records = out / "rationales"
  splits = datasets.load_dataset(dataset, seed=0)
  for split in ("train", "validation"):
    target = records / dataset / "finetune_cot" / split
    if not (target / "records.jsonl").exists():
      examples = splits[split][:max_train] if split == "train" else splits[split]
      pipelines.teach(examples, method=pipelines.Method("finetune_cot"),
                      answer_type=datasets.get_spec(dataset).answer_type,
                      output_dir=str(target), teacher=None, progress=False)
  vocab = out / "spm.model"
  if not vocab.exists():
    files = [str(records / dataset / "finetune_cot" / "train" / "records.jsonl")]
    vocabularies.train_sentencepiece(vocabularies.iter_rendered(files, "finetune_cot"), 128,
                                     str(out / "spm"), model_type="word",
                                     hard_vocab_limit=False)
  return str(records), str(vocab)


def teacher_chains(out: pathlib.Path, teacher_dir: pathlib.Path, records: str, vocab: str,
                   dataset: str, max_train: int) -> str:
  """A records dir of the teacher model's greedy chains of the training questions
  (answer-filtered), the validation records unchanged: sequence-level KD's data."""
  root = out / "teacher_chains"
  target = root / dataset / "finetune_cot"
  if (target / "train" / "records.jsonl").exists():
    return str(root)
  examples, answer_type = datasets.load_split(dataset, split="train",
                                              max_examples=max_train)
  chains = infer_lib.infer(student_lib.build(str(teacher_dir), vocabulary=vocab), examples,
                           fmt=Format.FINETUNE_COT, answer_type=answer_type,
                           output_dir=str(out / "teacher" / "train_chains"), name="greedy")
  outputs = {r["id"]: r["runs"][0]["output"] for r in chains if r["correct"]}
  source = pathlib.Path(records) / dataset / "finetune_cot"
  kept = []
  for line in (source / "train" / "records.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["id"] in outputs:
      record["rationale"] = outputs[record["id"]].split(" --> ")[0].strip()
      record["provenance"] = dict(record["provenance"], teacher=f"model {teacher_dir}")
      kept.append(json.dumps(record))
  for split in ("train", "validation"):
    (target / split).mkdir(parents=True, exist_ok=True)
  (target / "validation" / "records.jsonl").write_text(
      (source / "validation" / "records.jsonl").read_text())
  (target / "train" / "records.jsonl").write_text("\n".join(kept) + "\n")
  print(f"teacher chains: {len(kept)} of {len(examples)} kept (answer-filtered)", flush=True)
  return str(root)


def train(model_dir: pathlib.Path, config: t5.T5Config, records: str, vocab: str,
          task: str, settings: recipe.TrainSettings, teacher: str = "",
          distill: distillation.DistillSettings = distillation.DistillSettings(),
          initial: str = "") -> None:
  if (model_dir / "compute.json").exists():
    return
  phase1.run(model_dir=str(model_dir), model_config=config, mixture_or_task_name=task,
             task_feature_lengths=LENGTHS, settings=settings, records_dir=records,
             vocabulary=vocab, data_dir=str(model_dir.parent.parent / "data"),
             teacher_checkpoint_path=teacher or None, distill=distill,
             initial_checkpoint_path=initial or None)


def evaluate_dir(model_dir: pathlib.Path, out: pathlib.Path, vocab: str, dataset: str,
                 max_test: int) -> dict:
  if (out / "report.json").exists():
    return json.loads((out / "report.json").read_text())
  examples, answer_type = datasets.load_split(dataset, split="test", max_examples=max_test)
  student = student_lib.build(str(model_dir), vocabulary=vocab)
  return evaluate.evaluate(student, examples, fmt=Format.FINETUNE_COT,
                           answer_type=answer_type, output_dir=str(out), num_runs=0,
                           progress=True,
                           describe=evaluate._describe(str(model_dir), dataset, "test"))  # pylint: disable=protected-access


def per_question(run: pathlib.Path) -> dict[str, bool]:
  rows = {}
  for shard in sorted((run / "eval" / "greedy").glob("*.jsonl")):
    for line in shard.read_text().splitlines():
      r = json.loads(line)
      rows[r["id"]] = bool(r["correct"])
  return rows


def summarize(out: pathlib.Path, seeds: list[int], teacher_report: dict) -> dict:
  correct = {m: [per_question(out / m / f"seed_{s}") for s in seeds] for m in MODES}
  ids = sorted(correct["sft"][0])
  table = {}
  for mode, reference in MODES.items():
    accuracies = [100 * np.mean([c[i] for i in ids]) for c in correct[mode]]
    spent = [compute.read(out / mode / f"seed_{s}" / "model") for s in seeds]
    table[mode] = {"accuracy": dataclasses.asdict(significance.t_interval(accuracies)),
                   "per_seed": accuracies,
                   "train_flops": float(np.mean([c.train_flops for c in spent])),
                   "train_steps": float(np.mean([c.train_steps for c in spent])),
                   "wall_seconds": float(np.mean([c.wall_seconds for c in spent]))}
    if reference:
      a = [[c[i] for i in ids] for c in correct[mode]]
      b = [[c[i] for i in ids] for c in correct[reference]]
      table[mode]["versus"] = reference
      table[mode]["vs_reference"] = {
          "bootstrap": dataclasses.asdict(significance.paired_bootstrap(a, b)),
          "mcnemar": dataclasses.asdict(significance.mcnemar_seeds(a, b))}
  compared = [m for m in MODES if "versus" in table[m]]
  adjusted = significance.holm([table[m]["vs_reference"]["bootstrap"]["p_value"]
                                for m in compared])
  for mode, p in zip(compared, adjusted):
    table[mode]["vs_reference"]["holm_p"] = p
    table[mode]["vs_reference"]["verdict"] = significance.verdict(
        significance.Interval(**table[mode]["vs_reference"]["bootstrap"]), p)
  summary = {"seeds": seeds, "questions": len(ids), "modes": table,
             "teacher_accuracy": teacher_report["greedy"]["accuracy"],
             "majority_answer": teacher_report["majority_answer"]}
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  lines = ["| student | seeds | test accuracy (%), 95% CI | against (paired bootstrap; "
           "McNemar) | model FLOPs (this stage) | steps |", "|---|---|---|---|---|---|"]
  for mode in MODES:
    row, acc = table[mode], table[mode]["accuracy"]
    versus = ""
    if "versus" in row:
      boot, test = row["vs_reference"]["bootstrap"], row["vs_reference"]["mcnemar"]
      versus = (f"{row['versus']}: {boot['mean']:+.1%} [{boot['low']:+.1%}, "
                f"{boot['high']:+.1%}], Holm p={row['vs_reference']['holm_p']:.3g} "
                f"({row['vs_reference']['verdict']}); McNemar {test['only_a']} vs "
                f"{test['only_b']}, p={test['p_value']:.3g}")
    interval = (f" [{acc['low']:.1f}, {acc['high']:.1f}]" if acc["low"] is not None else "")
    lines.append(f"| {mode} | {len(seeds)} | {acc['mean']:.1f}{interval} | {versus} | "
                 f"{row['train_flops']:.3g} | {row['train_steps']:.0f} |")
  lines.append(f"\nHolm's adjustment over the table's {len(compared)} comparisons "
               "(bootstrap p-values).")
  majority = teacher_report["majority_answer"]
  lines.append(f"\nTeacher: {100 * teacher_report['greedy']['accuracy']:.1f}%; majority answer "
               f"{majority['answer']!r}: {100 * majority['accuracy']:.1f}% "
               f"({len(ids)} test questions).")
  (out / "table.md").write_text("\n".join(lines) + "\n")
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--dataset", default="coin_flip_long")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--max_train", type=int, default=1000)
  parser.add_argument("--max_test", type=int, default=300)
  parser.add_argument("--teacher_steps", type=int, default=800)
  parser.add_argument("--student_width", type=int, default=32)
  parser.add_argument("--sft_steps", type=int, default=300,
                      help="the budget: what this many supervised student steps cost")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--second_steps", type=int, default=150,
                      help="the second stage's budget, in supervised steps' cost")
  parser.add_argument("--second_learning_rate", type=float, default=1e-3)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  records, vocab = teach(out, args.dataset, args.max_train)
  task = f"tinythinker.{args.dataset}.finetune_cot"

  def settings(seed: int, learning_rate: float = args.learning_rate,
               **length) -> recipe.TrainSettings:
    return recipe.TrainSettings(batch_size=args.batch_size, optimizer="adamw",
                                schedule="cosine", learning_rate=learning_rate,
                                warmup_steps=20, data_parallelism=1, seed=seed,
                                checkpoint_every=500, keep_checkpoints=1, log_every=20,
                                z_loss=0.0, **length)

  started = time.time()
  teacher_dir = out / "teacher" / "model"
  train(teacher_dir, t5_config(64, 2, 4), records, vocab, task,
        settings(0, train_steps=args.teacher_steps))
  teacher_report = evaluate_dir(teacher_dir, out / "teacher" / "eval", vocab, args.dataset,
                                args.max_test)
  print(f"teacher: {teacher_report['greedy']['accuracy']:.3f} "
        f"({time.time() - started:.0f} s)", flush=True)
  chains_dir = teacher_chains(out, teacher_dir, records, vocab, args.dataset, args.max_train)
  student = t5_config(args.student_width, 2, 2)
  budgets = {}
  for seed in seeds:
    for mode in MODES:
      model_dir = out / mode / f"seed_{seed}" / "model"
      second = mode.startswith("continued")
      same_steps = mode.endswith("_steps")
      kind = mode.replace("continued_", "").replace("continued", "sft").replace("_steps", "")
      data = chains_dir if kind == "seq_kd" else records
      initial = str(out / "sft" / f"seed_{seed}" / "model") if second else ""
      lr = args.second_learning_rate if second else args.learning_rate
      if kind in ("sft", "seq_kd"):
        train(model_dir, student, data, vocab, task,
              settings(seed, lr, train_steps=args.second_steps if second else args.sft_steps),
              initial=initial)
        if kind == "sft":
          budgets[second] = compute.read(model_dir).train_flops
      else:
        length = ({"train_steps": args.second_steps if second else args.sft_steps}
                  if same_steps else {"train_flops": budgets[second]})
        train(model_dir, student, records, vocab, task,
              settings(seed, lr, **length), teacher=str(teacher_dir),
              distill=distillation.DistillSettings(
                  beta=0.5, on_policy_fraction=1.0 if kind == "on_policy" else 0.0),
              initial=initial)
      report = evaluate_dir(model_dir, out / mode / f"seed_{seed}" / "eval", vocab,
                            args.dataset, args.max_test)
      print(f"{mode} seed {seed}: {report['greedy']['accuracy']:.3f} "
            f"({time.time() - started:.0f} s)", flush=True)
  summarize(out, seeds, teacher_report)
  print((out / "table.md").read_text())


if __name__ == "__main__":
  main()
