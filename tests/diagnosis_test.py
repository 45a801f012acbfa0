"""Stage diagnosis: a scripted student whose analyze stage calls every option
wrong, against hand-made teacher rationales; the expected fractions are
counted by hand below."""

import dataclasses

import pytest

from tinythinker_jax.data.schema import Example, RationaleRecord, labelled
from tinythinker_jax.reasoning import chains, diagnosis
from tinythinker_jax.reasoning.chains import Generation
from tinythinker_jax.reasoning.formats import Format
from tinythinker_jax.stages import evaluate

OPTIONS = ["red ball", "blue ball", "green ball"]
GOLD = ["A", "B", "C", "B"]


def _records():
  records = []
  for i, gold in enumerate(GOLD):
    example = Example(id=f"q{i}", question=f"Question {i}: who ends with what?",
                      answer=gold, choices=labelled(OPTIONS))
    final = OPTIONS["ABC".index(gold)]
    analyses = {label: (f"Bob ends with {final} , which is this option ." if label == gold
                        else f"Bob ends with {final} , not {text} .")
                for label, text in zip("ABC", OPTIONS)}
    records.append(RationaleRecord(id=f"q{i}", method="tinythinker", example=example,
                                   label=gold, recall=f"Trace {i} ends with {final} .",
                                   analyses=analyses))
  # A second sample of q0 with another recall: the first sample is the one used.
  records.append(RationaleRecord(id="q0", method="tinythinker", example=records[0].example,
                                 sample_index=1, label="A", recall="Another trace .",
                                 analyses=records[0].analyses))
  return records


def collapsed_student(prompts, sampling, seed):
  """Recalls the teacher's trace for q0 and q1 only; analyzes every option as
  wrong (the final item read from the recall); summarizes the option an
  analysis calls 'this option', else A."""
  out = []
  for prompt in prompts:
    number = int(prompt.split(":")[0].split()[-1])
    if prompt.endswith("Recall:"):
      final = OPTIONS["ABC".index(GOLD[number])]
      text = f"Trace {number} ends with {final} ." if number < 2 else "Something else ."
    elif prompt.endswith(","):
      label = prompt[-2]
      recall = prompt.split("Recall: ")[1].split("\n")[0]
      final = next((o for o in OPTIONS if o in recall), "nothing")
      text = f"Bob ends with {final} , not {OPTIONS['ABC'.index(label)]} ."
    else:
      picked = [l for l in "ABC" if f"For option {l}, Bob ends with" in prompt and
                prompt.split(f"For option {l}, ")[1].split(" For option")[0]
                .count("this option")]
      text = f"So the answer is option {picked[0] if picked else 'A'}."
    out.append([Generation(text, -1.0, 3)] * sampling.num_samples)
  return out


def test_diagnosis_locates_the_failing_stage():
  result = diagnosis.stage_diagnosis(_records(), collapsed_student)
  # Every own chain answers A (no analysis says 'this option'): right on q0 only.
  assert result["questions"] == 4
  assert result["own_chain"] == pytest.approx(1 / 4)
  assert result["from_teacher_recall"] == pytest.approx(1 / 4)
  # Given the teacher's analyses, the summarize stage is right on all four.
  assert result["from_teacher_recall_and_analyses"] == pytest.approx(1.0)
  assert result["recall_matches_teacher"] == pytest.approx(2 / 4)
  assert result["analysis_matches_teacher"] == {"gold_option": 0.0, "other_options": 1.0}
  lines = "\n".join(diagnosis.markdown_lines(dict(result, records="val/records.jsonl")))
  assert "| from the teacher's recall and analyses (accuracy) | 100.0 |" in lines
  assert "`val/records.jsonl`" in lines


def test_ablation_without_an_analyze_stage_skips_its_rows():
  result = diagnosis.stage_diagnosis(_records(), collapsed_student,
                                     fmt=Format.RECALL_SUMMARIZE)
  assert set(result) == {"format", "questions", "skipped_questions", "own_chain",
                         "recall_matches_teacher", "from_teacher_recall"}
  assert result["own_chain"] == pytest.approx(1 / 4)


def test_diagnosis_errors_name_the_record():
  records = _records()
  # A record without every option's analysis is skipped and counted...
  records[2] = dataclasses.replace(records[2], analyses={"A": "x"})
  result = diagnosis.stage_diagnosis(records, collapsed_student)
  assert (result["questions"], result["skipped_questions"]) == (3, 1)
  assert result["from_teacher_recall_and_analyses"] == pytest.approx(1.0)
  # ... and none left is an error naming the first incomplete record.
  incomplete = [dataclasses.replace(r, recall=None) for r in _records()]
  with pytest.raises(ValueError, match="no complete teacher record .teacher record q0: "
                                       "no recall"):
    diagnosis.stage_diagnosis(incomplete, collapsed_student)
  with pytest.raises(ValueError, match="TinyThinker formats, not finetune_cot"):
    diagnosis.stage_diagnosis(records, collapsed_student, fmt=Format.FINETUNE_COT)
  example = _records()[0].example
  with pytest.raises(ValueError, match="example q0: no given analysis for option.* C"):
    chains.run_staged([example], collapsed_student, recalls=[["r."]],
                      analyses=[[{"A": "a", "B": "b"}]])


def test_evaluation_report_carries_the_diagnosis(tmp_path):
  class Student:
    generate = staticmethod(collapsed_student)
  records = _records()
  examples = [r.example for r in records[:4]]
  report = evaluate.evaluate(Student(), examples, fmt=Format.TINYTHINKER,
                             answer_type=None, output_dir=str(tmp_path), num_runs=0,
                             progress=False, teacher_records=records,
                             teacher_records_path="records.jsonl",
                             describe={"model": "m", "dataset": "d", "split": "test"})
  assert report["greedy"]["accuracy"] == pytest.approx(1 / 4)
  assert report["stage_diagnosis"]["from_teacher_recall_and_analyses"] == 1.0
  assert "Stage diagnosis on 4 questions" in (tmp_path / "report.md").read_text()
  # Records it cannot use leave the evaluation whole, the reason in the report.
  unusable = [dataclasses.replace(r, analyses=None) for r in records]
  report = evaluate.evaluate(Student(), examples, fmt=Format.TINYTHINKER,
                             answer_type=None, output_dir=str(tmp_path), num_runs=0,
                             progress=False, teacher_records=unusable,
                             describe={"model": "m", "dataset": "d", "split": "test"})
  assert report["greedy"]["accuracy"] == pytest.approx(1 / 4)
  assert "no analysis of every option" in report["stage_diagnosis"]["error"]
  assert "Stage diagnosis: not run" in (tmp_path / "report.md").read_text()
