"""The pipeline's `report/`: report.md with PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

from tinythinker_jax import compute, paths

NAMES = {"untrained": "the pretrained model, untrained (zero-shot)",
         "vanilla": "vanilla (answer only)", "finetune_cot": "Fine-tune-CoT",
         "step_by_step": "Distilling Step-by-Step",
         "finetune_cot_decoder": "Fine-tune-CoT (decoder-only format)",
         "tinythinker": "TinyThinker, phase 1",
         "tinythinker_reflected": "TinyThinker, after self-reflection",
         "tinythinker_continued": "TinyThinker, phase 1 continued (same compute)",
         "tinythinker_rft": "TinyThinker + rejection-sampling fine-tuning (same compute)",
         "summarize": "TinyThinker ablation: summarize only",
         "recall_summarize": "TinyThinker ablation: recall + summarize",
         "analyze_summarize": "TinyThinker ablation: analyze + summarize"}
# Short labels for plots.
SHORT = {"untrained": "untrained", "vanilla": "vanilla", "finetune_cot": "FTC",
         "finetune_cot_decoder": "FTC (dec.)", "step_by_step": "step-by-step",
         "tinythinker": "TT phase 1", "tinythinker_reflected": "TT + reflection",
         "tinythinker_continued": "TT continued", "tinythinker_rft": "TT + RFT",
         "summarize": "TT summarize", "recall_summarize": "TT recall+sum.",
         "analyze_summarize": "TT analyze+sum."}
# Students distilled from a teacher's distribution (`DISTILL_TEACHER`).
for _name in ("vanilla", "finetune_cot", "finetune_cot_decoder"):
  NAMES[f"{_name}_distilled"] = (f"{NAMES[_name]}, distilled from the teacher's "
                                 "distribution (same compute)")
  SHORT[f"{_name}_distilled"] = f"{SHORT[_name]} + KD"


def floor(reports: Mapping[str, Any]) -> Optional[tuple[str, float]]:
  """The test set's majority answer and its accuracy (from any report)."""
  majority = next((r["majority_answer"] for r in reports.values()
                   if r.get("majority_answer")), None)
  return (str(majority["answer"]), majority["accuracy"]) if majority else None


def findings(reports: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
  """What a reader must see first: trained students below the untrained model
  (by generation or by ranking), or below the majority answer."""
  out = []
  base = reports.get("untrained")
  majority = floor(reports)
  for name, r in reports.items():
    if name == "untrained":
      continue
    label = labels.get(name, name)
    if base is not None:
      for key, what in (("greedy", "generated answers"), ("rank", "ranked options")):
        mine, before = (r.get(key) or {}).get("accuracy"), (base.get(key) or {}).get(
            "accuracy")
        if mine is not None and before is not None and mine < before:
          out.append(f"- **{label} fell below the untrained model** on {what}: "
                     f"{mine:.1%} against {before:.1%} ({100 * (mine - before):+.1f} points).")
    if majority and r["greedy"]["accuracy"] < majority[1]:
      out.append(f"- {label} ({r['greedy']['accuracy']:.1%}) is below the majority answer "
                 f"(always {majority[0]!r}: {majority[1]:.1%}).")
  return (["## Findings", "", *out, ""] if out else [])


def _percent(value) -> str:
  return "-" if value is None else f"{value:.1%}"


def teacher_row(key: str, s: dict) -> str:
  """One teaching summary (summary.json) as a row of the report's teacher table."""
  samples = s.get("samples") or 0
  dropped = ", ".join(f"{k}: {v} ({v / samples:.0%})" for k, v in s["dropped"].items()
                      ) if samples else ""
  return (f"| {key} | {s['teacher']} | {s['examples']} | {samples} | "
          f"{_percent(s.get('parse_rate'))} | {s['kept']} ({_percent(s.get('kept_rate'))}) "
          f"| {dropped or '0'} | {s.get('format_retries', 0)} "
          f"({s.get('recovered_by_retry', 0)}) | {_percent(s['teacher_accuracy'])} |")


def _read_jsonl(path: paths.PathLike) -> list[dict[str, Any]]:
  path = paths.as_path(path)
  if not path.exists():
    return []
  return paths.read_jsonl(path)


def _save(fig, out: paths.PathLike, name: str) -> None:
  """A figure as PNG in `out` (local or an object store)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  paths.write_bytes(paths.as_path(out) / name, buffer.getvalue())


def _curve(model_dir: str, key: str = "train/loss") -> tuple[list[int], list[float]]:
  rows = [r for r in _read_jsonl(paths.as_path(model_dir) / "metrics.jsonl") if key in r]
  return [r["step"] for r in rows], [r[key] for r in rows]


def _plots(out: str, reports: Mapping[str, Any], students: Mapping[str, str],
           reflect: Mapping[str, Any] | None, labels: Mapping[str, str]) -> list[str]:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  files = []

  # Horizontal bars with short labels (long names overlapped under vertical bars),
  # the floor drawn as the test set's majority answer.
  names = list(reports)
  kinds = [(k, label) for k, label in (("greedy", "greedy"),
                                       ("self_consistency", "self-consistency"),
                                       ("rank", "rank classification"))
           if any(reports[n].get(k) for n in names)]
  fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(names) * len(kinds)))
  height = 0.8 / len(kinds)
  for k, (key, label) in enumerate(kinds):
    values = [100 * (reports[n].get(key) or {}).get("accuracy", 0.0) for n in names]
    bars = ax.barh([i + (k - (len(kinds) - 1) / 2) * height for i in range(len(names))],
                   values, height, label=label)
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
  majority = floor(reports)
  if majority:
    ax.axvline(100 * majority[1], color="gray", linestyle="--",
               label=f"majority answer ({majority[0]!r})")
  ax.set_yticks(range(len(names)), [SHORT.get(n, n) for n in names], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel("test accuracy (%)")
  ax.set_xlim(0, 110)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  _save(fig, out, "accuracy.png")
  plt.close(fig)
  files.append("accuracy.png")

  fig, ax = plt.subplots(figsize=(7, 3.6))
  for name, model_dir in students.items():
    if name.startswith("tinythinker_"):
      continue  # (phase 2 and the baselines start from phase 1's checkpoint)
    steps, losses = _curve(model_dir)
    if steps:
      ax.plot(steps, losses, label=labels.get(name, name))
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (per target token)")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, out, "training_curves.png")
  plt.close(fig)
  files.append("training_curves.png")

  if reflect and reflect.get("rounds"):
    # Validation per round, and TRL's DPO diagnostics per step of each round.
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 6))
    (left, loss_ax), (acc_ax, reward_ax) = axes
    rounds = [0] + [r["round"] for r in reflect["rounds"]]
    accuracies = [reflect["initial"]["validation_accuracy"]] + [
        r.get("validation_accuracy") for r in reflect["rounds"]]
    left.plot([r for r, a in zip(rounds, accuracies) if a is not None],
              [100 * a for a in accuracies if a is not None], marker="o")
    left.set_xlabel("self-reflection round")
    left.set_ylabel("validation chain accuracy (%)")
    left.set_xticks(rounds)
    for r in reflect["rounds"]:
      if not r.get("model_dir"):
        continue
      label = f"round {r['round']}"
      steps, losses = _curve(r["model_dir"], "train/preference_loss")
      line, = loss_ax.plot(steps, losses, marker=".", label=label)
      steps, accuracy = _curve(r["model_dir"], "train/accuracy")
      acc_ax.plot(steps, [100 * a for a in accuracy], marker=".", color=line.get_color())
      for key, style in (("train/chosen_reward", "-"), ("train/rejected_reward", "--")):
        steps, rewards = _curve(r["model_dir"], key)
        reward_ax.plot(steps, rewards, style, color=line.get_color())
    loss_ax.set_xlabel("DPO step")
    loss_ax.set_ylabel("preference loss")
    loss_ax.legend(fontsize=8)
    acc_ax.set_xlabel("DPO step")
    acc_ax.set_ylabel("reward accuracy (%)")
    reward_ax.set_xlabel("DPO step")
    reward_ax.set_ylabel("reward: chosen (solid), rejected (dashed)")
    reward_ax.axhline(0.0, color="grey", linewidth=0.5)
    fig.tight_layout()
    _save(fig, out, "self_reflection.png")
    plt.close(fig)
    files.append("self_reflection.png")
  return files


def budget_lines(stages: Mapping[str, Any], reports: Mapping[str, Any]) -> list[str]:
  """What each student was given: phase 1's convergence, self-reflection's
  compute, and the budget the baselines and other formats had."""
  train = stages.get("train_tinythinker", {}).get("outputs", {})
  if not train.get("compute"):
    return []
  phase1 = train["compute"]
  stop = (f"converged: stopped at step {train['stopped_early']}"
          if train.get("stopped_early") else f"{phase1['train_steps']} steps")
  lines = ["## Budget", "", f"TinyThinker's phase 1 spent "
           f"{compute.format_flops(phase1['train_flops'])} ({stop})."]
  reflected = (reports.get("tinythinker_reflected") or {}).get("compute")
  if reflected:
    lines.append(f"With self-reflection its total is "
                 f"{compute.format_flops(reflected['total_flops'])} (sampling included); "
                 "the continued and rejection-sampling baselines were given the same "
                 "compute, and vanilla and Fine-tune-CoT the same as a cap (each stops "
                 "early once its validation accuracy has converged).")
  return lines + [""]


def describe_model(config: dict) -> str:
  """'T5 64d, 2+2 layers', 'Llama-family decoder 64d, 2 layers' or 'GPT-2 decoder
  64d, 2 layers' from a model config."""
  if "num_encoder_layers" in config:
    return (f"T5 {config['emb_dim']}d, {config['num_encoder_layers']}+"
            f"{config['num_decoder_layers']} layers")
  family = "Llama-family decoder" if "num_kv_heads" in config else "GPT-2 decoder"
  return f"{family} {config['emb_dim']}d, {config['num_layers']} layers"


def write_report(run_dir: str, manifest: Mapping[str, Any],
                 students: Mapping[str, str]) -> dict[str, Any]:
  out = paths.as_path(run_dir) / "report"
  out.mkdir(parents=True, exist_ok=True)
  stages = manifest["stages"]
  reports = stages["evaluate"]["outputs"]["reports"]
  reflect = stages.get("reflect", {}).get("outputs")
  labels = dict(NAMES)
  distill = manifest["settings"].get("distill")
  if distill:
    mode = ("on-policy" if distill["on_policy_fraction"] >= 1.0 else "offline logit"
            if distill["on_policy_fraction"] == 0.0 else
            f"{distill['on_policy_fraction']:.0%} on-policy")
    for name in [n for n in labels if n.endswith("_distilled")]:
      labels[name] = labels[name].replace(
          "distilled from the teacher's distribution",
          f"{mode} distillation from {distill['teacher']} (beta {distill['beta']})")
  if reflect:
    kept = reflect["best"]["round"]
    labels["tinythinker_reflected"] = (
        f"TinyThinker, after self-reflection (round {kept})" if kept else
        "TinyThinker, after self-reflection (no round beat phase 1; phase 1 kept)")
  plots = _plots(out, reports, students, reflect, labels)
  settings = manifest["settings"]
  phase1 = settings["train_settings"]
  length = (f"{phase1['train_steps']} phase-1 steps" if phase1.get("train_steps") else
            f"{phase1['num_epochs']} phase-1 epochs" if phase1.get("num_epochs") else
            "a phase-1 budget")
  if phase1.get("early_stop_patience"):
    length = (f"up to {length}, stopped once validation chain accuracy had not improved "
              f"for {phase1['early_stop_patience']} evaluations")
  lines = [f"# tinythinker report: {settings['dataset']}", "",
           f"Teacher: {settings['teacher']}. Students: {describe_model(settings['model_config'])}, "
           f"{length}, with batches of {phase1['batch_size']}.", ""]
  lines += findings(reports, labels)
  lines += budget_lines(stages, reports)

  extra = sorted({k for r in reports.values() for k in r.get("extra_test_sets") or {}})
  lines += ["## Test accuracy", "",
            "| student | greedy | self-consistency | rank classification | "
            + "".join(f"{k} (greedy) | " for k in extra)
            + "format errors (greedy) | examples | model FLOPs | train steps | wall (s) |",
            "|---|---|---|---|" + "---|" * len(extra) + "---|---|---|---|---|"]
  for name, r in reports.items():
    sc = r.get("self_consistency")
    sc_text = f"{sc['accuracy']:.1%} ({sc['num_runs']} runs)" if sc else "-"
    extra_text = "".join(
        f"{r['extra_test_sets'][k]['greedy']['accuracy']:.1%} | "
        if k in (r.get("extra_test_sets") or {}) else "- | " for k in extra)
    spent = r.get("compute") or {}
    rank = (r.get("rank") or {}).get("accuracy")
    lines.append(f"| {labels.get(name, name)} | {r['greedy']['accuracy']:.1%} | {sc_text} | "
                 f"{_percent(rank)} | {extra_text}{r['greedy']['format_error_rate']:.1%} | "
                 f"{r['greedy']['num_examples']} | "
                 f"{compute.format_flops(spent['total_flops']) if spent else '-'} | "
                 f"{spent.get('train_steps', '-')} | {spent.get('stage_seconds', '-')} |")
  majority = floor(reports)
  if majority:
    lines += ["", f"The floor: always answering the test set's most common answer "
              f"({majority[0]!r}) scores {majority[1]:.1%}."]
  lines += ["", "![accuracy](accuracy.png)", ""]

  lines += ["## Teacher", "", "| rationales | teacher | questions | samples | parsed | "
            "kept | dropped (share of samples) | format retries (recovered) | "
            "teacher accuracy |", "|---|---|---|---|---|---|---|---|---|"]
  for key, s in stages["teach"]["outputs"]["summaries"].items():
    lines.append(teacher_row(key, s))
  lines += ["", "## Training", "", "![training curves](training_curves.png)", ""]
  if reflect:
    lines += ["## Self-reflection", "",
              "| round | preference pairs | validation chain accuracy |", "|---|---|---|",
              f"| 0 (phase 1) | - | {reflect['initial']['validation_accuracy']:.1%} |"]
    for r in reflect["rounds"]:
      accuracy = ("skipped: " + r["skipped"]) if r.get("skipped") else \
          f"{r['validation_accuracy']:.1%}"
      lines.append(f"| {r['round']} | {r['pairs']} | {accuracy} |")
    lines += ["", f"Kept: round {reflect['best']['round']}.", "",
              "![self-reflection](self_reflection.png)", ""]
  lines += ["## Sample reasoning chains (greedy, test)", ""]
  for name in reports:
    chains = reports[name].get("sample_chains") or []
    if chains:
      lines.append(f"**{labels.get(name, name)}**")
      lines.append("")
      for c in chains[:2]:
        lines.append(f"- gold {c['gold']}, predicted {c['answer']}: `{c['chain']}`")
      lines.append("")
  lines += ["## Stages", "", "| stage | seconds | finished in run |", "|---|---|---|"]
  for name, s in stages.items():
    lines.append(f"| {name} | {s['seconds']} | {s['run']} |")
  lines += ["", "Evaluation records: `evaluate/<student>/`; students: `students/`; "
            "Hugging Face export: `export/hf_model/`."]
  text = "\n".join(lines) + "\n"
  paths.write_text(out / "report.md", text)
  return {"report": str(out / "report.md"), "plots": plots}
