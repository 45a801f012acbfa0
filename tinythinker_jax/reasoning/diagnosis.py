"""Where a staged chain goes wrong: each stage of a student fed the teacher's
earlier stages.

A TinyThinker student that answers at chance may fail at any of its three
stages. `stage_diagnosis` runs the student's chains on questions that have
teacher rationales three times:

- its own chain (recall -> analyze -> summarize, as evaluation runs it);
- from the teacher's recall (the student analyzes and summarizes);
- from the teacher's recall and analyses (the student only summarizes);

and compares the student's stage outputs with the teacher's: the recall, and
each option's analysis written from the teacher's recall, split into the gold
option and the other options (a student that calls every option wrong matches
the others and never the gold one). Matches are exact after whitespace, case
and a final '.' are normalised: meaningful for a rule-based teacher, a lower
bound for an LLM's free text. Accuracy is greedy. Formats without a recall or
analyze stage skip the rows that need it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from tinythinker_jax.data.schema import RationaleRecord
from tinythinker_jax.reasoning import chains, formats
from tinythinker_jax.reasoning.formats import Format, Stage


def _normal(text: Optional[str]) -> str:
  return " ".join((text or "").split()).rstrip(".").strip().lower()


def _accuracy(runs: Sequence[Sequence[chains.ChainRun]], records, fmt: Format) -> float:
  # A staged format's answer is an option label: the answer type plays no part.
  right = sum(chains.is_correct(rs[0].answer, r.example, fmt, answer_type=None)
              for rs, r in zip(runs, records))
  return right / len(records)


def _mean(values: Sequence[bool]) -> Optional[float]:
  return sum(values) / len(values) if values else None


def first_records(records: Sequence[RationaleRecord], fmt: Format
                  ) -> tuple[list[RationaleRecord], int]:
  """One teacher record per question (its first complete sample) with the
  fields the stages of `fmt` need, and how many questions had none (an LLM's
  record may lack an option's analysis); an error when none is left."""
  stages = formats.STAGES_OF.get(fmt)
  if stages is None:
    raise ValueError(f"stage diagnosis serves the TinyThinker formats, not {fmt.value}")
  chosen: dict[str, RationaleRecord] = {}
  seen, first_problem = set(), None
  for record in records:
    seen.add(record.id)
    problem = None
    if Stage.RECALL in stages and not record.recall:
      problem = "no recall"
    elif Stage.ANALYZE in stages and set(record.example.labels) - set(record.analyses or {}):
      problem = "no analysis of every option"
    elif record.example.gold_label is None:
      problem = "no gold option"
    if problem:
      first_problem = first_problem or f"teacher record {record.id}: {problem}"
      continue
    held = chosen.get(record.id)
    if held is None or record.sample_index < held.sample_index:
      chosen[record.id] = record
  if not chosen:
    raise ValueError("stage diagnosis: no complete teacher record"
                     + (f" ({first_problem}; a {fmt.value} diagnosis needs TinyThinker "
                        "rationales)" if first_problem else ""))
  return list(chosen.values()), len(seen) - len(chosen)


def stage_diagnosis(records: Sequence[RationaleRecord], generate: chains.GenerateFn, *,
                    fmt: Format = Format.TINYTHINKER, seed: int = 0) -> dict[str, Any]:
  """The rows of the module docstring, as fractions, for `records` (teacher
  rationales of held-out questions)."""
  kept, skipped = first_records(records, fmt)
  stages = formats.STAGES_OF[fmt]
  examples = [r.example for r in kept]
  own = chains.run_staged(examples, generate, fmt=fmt, seed=seed)
  out: dict[str, Any] = {"format": fmt.value, "questions": len(kept),
                         "skipped_questions": skipped,
                         "own_chain": _accuracy(own, kept, fmt)}
  recalls = [[r.recall if Stage.RECALL in stages else None] for r in kept]
  analyzed = own  # the runs whose analyses are compared: from the teacher's recall
  if Stage.RECALL in stages:
    out["recall_matches_teacher"] = _mean(
        [_normal(rs[0].recall) == _normal(r.recall) for rs, r in zip(own, kept)])
    analyzed = chains.run_staged(examples, generate, fmt=fmt, seed=seed, recalls=recalls)
    out["from_teacher_recall"] = _accuracy(analyzed, kept, fmt)
  if Stage.ANALYZE in stages:
    gold_matches, other_matches = [], []
    for rs, record in zip(analyzed, kept):
      for label in record.example.labels:
        match = _normal(rs[0].analyses.get(label)) == _normal(record.analyses.get(label))
        (gold_matches if label == record.example.gold_label else other_matches).append(match)
    out["analysis_matches_teacher"] = {"gold_option": _mean(gold_matches),
                                       "other_options": _mean(other_matches)}
    from_both = chains.run_staged(examples, generate, fmt=fmt, seed=seed, recalls=recalls,
                                  analyses=[[r.analyses] for r in kept])
    out["from_teacher_recall_and_analyses"] = _accuracy(from_both, kept, fmt)
  return out


def markdown_lines(diagnosis: dict[str, Any]) -> list[str]:
  """The diagnosis as a small markdown table (evaluation's report.md)."""
  if "error" in diagnosis:
    return [f"Stage diagnosis: not run ({diagnosis['error']})."]
  def pct(value):
    return "-" if value is None else f"{100 * value:.1f}"
  rows = [("own chain (accuracy)", diagnosis.get("own_chain")),
          ("from the teacher's recall (accuracy)", diagnosis.get("from_teacher_recall")),
          ("from the teacher's recall and analyses (accuracy)",
           diagnosis.get("from_teacher_recall_and_analyses")),
          ("recall equal to the teacher's", diagnosis.get("recall_matches_teacher"))]
  matches = diagnosis.get("analysis_matches_teacher") or {}
  rows += [("analysis equal to the teacher's, gold option", matches.get("gold_option")),
           ("analysis equal to the teacher's, other options", matches.get("other_options"))]
  source = f" (`{diagnosis['records']}`)" if diagnosis.get("records") else ""
  skipped = diagnosis.get("skipped_questions")
  skipped = f", {skipped} more without a complete record skipped" if skipped else ""
  lines = [f"Stage diagnosis on {diagnosis['questions']} questions with teacher "
           f"rationales{source}{skipped} (%):", "", "| | % |", "|---|---|"]
  lines += [f"| {name} | {pct(value)} |" for name, value in rows
            if name.startswith("own") or value is not None]
  return lines
