"""Recorded rationales as a teacher: Distilling Step-by-Step's PaLM chains and any
JSONL file of chains, cut, parsed and filtered as a live teacher's replies."""

import json

import pytest

from tinythinker_jax import errors
from tinythinker_jax.data import arithmetic, datasets, loaders
from tinythinker_jax.data.schema import AnswerType
from tinythinker_jax.stages import teach as teach_lib
from tinythinker_jax.teacher import pipelines, recorded


def _slice(shared, tmp_path, task, source, llm, n, test_lines=2):
  """A Distilling Step-by-Step folder holding the first `n` lines (and chains)."""
  root = shared / "distilling_step_by_step" / task
  out = tmp_path / task
  (out / "llm").mkdir(parents=True)
  lines = (root / f"{source}_train.json").read_text().splitlines()[:n]
  (out / f"{source}_train.json").write_text("\n".join(lines) + "\n")
  test = (root / f"{source}_test.json").read_text().splitlines()[:test_lines]
  (out / f"{source}_test.json").write_text("\n".join(test) + "\n")
  chains = json.loads((root / "llm" / llm).read_text())[:n]
  (out / "llm" / "train_CoT_0.json").write_text(json.dumps(chains))
  return out


def test_arithmetic_value():
  assert arithmetic.arithmetic_value("( ( 4.0 * 17.0 ) * 16.0 )") == 1088
  assert arithmetic.arithmetic_value("(16 * 17) * 4") == 1088
  assert arithmetic.arithmetic_value("-(3 - 5) / 4") == 0.5
  assert arithmetic.arithmetic_value("1 / 0") is None
  assert arithmetic.arithmetic_value("((28 - 13) and (28 - 15))") is None
  assert arithmetic.arithmetic_value("__import__('os')") is None
  assert arithmetic.format_number(42.0) == "42" and arithmetic.format_number(2.5) == "2.5"


def test_split_completion_cuts_the_made_up_continuation():
  text = ("Bags hold things. So the answer is (b) bag.\n\nQ: What is red?\n"
          "Answer Choices:\n(a) sky\nA: So the answer is (a) sky.")
  assert recorded.split_completion(text) == ("Bags hold things.", "So the answer is (b) bag.")
  assert recorded.split_completion("No answer here") == ("No answer here", "")


def test_csqa_chains_cut_parsed_and_filtered_by_hand(shared_data, tmp_path):
  folder = _slice(shared_data, tmp_path, "cqa", "cqa", "train_CoT_0.json", 6)
  examples = loaders.load_dsbs_cqa_jsonl(str(folder / "cqa_train.json"))
  # Gold letters read from the lines by hand: D, D (the second 'bridge'... the
  # first of two equal texts), E, C, B, A.
  assert [e.answer for e in examples] == ["D", "D", "E", "C", "B", "A"]
  out = tmp_path / "teach"
  summary = pipelines.teach_recorded(
      examples, answer_type=AnswerType.LETTER, output_dir=str(out),
      settings=recorded.RecordedSettings(path=str(folder)), progress=False)
  # PaLM answers (d), (c), (e), (c), (d), (d): right on lines 0, 2 and 3.
  assert (summary.samples, summary.kept, summary.parsed) == (6, 3, 6)
  assert summary.teacher_accuracy == pytest.approx(3 / 6)
  assert summary.dropped == {"answer differs from gold": 3}
  kept = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
  assert [r["id"] for r in kept] == [examples[i].id for i in (0, 2, 3)]
  assert kept[0]["rationale"] == (
      "The answer must be something that has to do with the above problem. Of the above "
      "choices, only math problem has to do with the above problem.")
  assert kept[0]["teacher_answer_text"] == "So the answer is (d) math problem."
  assert kept[0]["recorded_from"].endswith("train_CoT_0.json[0]")
  dropped = [json.loads(l) for l in (out / "dropped.jsonl").read_text().splitlines()]
  assert [d["teacher_answer"] for d in dropped] == ["C", "D", "D"]


def test_step_by_step_keeps_every_chain_with_the_gold_label(shared_data, tmp_path):
  folder = _slice(shared_data, tmp_path, "cqa", "cqa", "train_CoT_0.json", 6)
  examples = loaders.load_dsbs_cqa_jsonl(str(folder / "cqa_train.json"))
  summary = pipelines.teach_recorded(
      examples, answer_type=AnswerType.LETTER, output_dir=str(tmp_path / "t"),
      settings=recorded.RecordedSettings(path=str(folder), filter_answers=False),
      progress=False)
  assert (summary.kept, summary.teacher_accuracy) == (6, pytest.approx(0.5))
  kept = [json.loads(l) for l in (tmp_path / "t" / "records.jsonl").read_text().splitlines()]
  assert [r["answer"] for r in kept] == ["D", "D", "E", "C", "B", "A"]
  assert kept[1]["teacher_answer"] == "C"


def test_svamp_answers_are_the_expressions_values(shared_data, tmp_path):
  folder = _slice(shared_data, tmp_path, "svamp", "svamp", "train_CoT_0.json", 8)
  examples = loaders.load_dsbs_svamp_jsonl(str(folder / "svamp_train.json"))
  # Gold: the labels' values, by hand.
  assert [e.answer for e in examples] == ["42", "210", "34", "6", "7", "1088", "1", "280"]
  out = tmp_path / "teach"
  summary = pipelines.teach_recorded(
      examples, answer_type=AnswerType.NUMBER, output_dir=str(out),
      settings=recorded.RecordedSettings(path=str(folder)), progress=False)
  # PaLM: 84/2=42 right, 7*36 wrong, 17+15+2 right, 30-28 wrong, 30-23 right,
  # (16*17)*4 right, "((28 - 13) and (28 - 15))" read as 28 (wrong), 8*35 right.
  kept = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
  assert [r["id"] for r in kept] == [examples[i].id for i in (0, 2, 4, 5, 7)]
  assert summary.dropped == {"answer differs from gold": 3}
  assert kept[0]["rationale"] == ("Luke scored 84 points after 2 rounds. So he scored 84 "
                                  "points in 2 rounds. 84 / 2 = 42.")


@pytest.mark.parametrize("task,source,count", [
    # The release's README: 7483 right, 2255 wrong, 3 with no answer letter.
    ("cqa", "csqa", (7483, 2255, 3)),
    # The README counts 588 right, 201 wrong, 11 unparseable. Read as a live
    # teacher's reply, the whole stated expression is the answer ("The answer is
    # (16 * 17) * 4." is 1088, the README's first bracket 272), which nets 7 more
    # right; the 11 without an answer are the same.
    ("svamp", "svamp", (595, 194, 11))])
def test_whole_release_matches_its_counts(shared_data, tmp_path, task, source, count):
  """Every train chain of the release, read as a live teacher's replies."""
  folder = shared_data / "distilling_step_by_step" / task
  chains = recorded.read_chains(str(folder))
  spec = datasets.get_spec(source)
  train = (loaders.load_dsbs_cqa_jsonl(str(folder / "cqa_train.json"))
           if task == "cqa" else
           loaders.load_dsbs_svamp_jsonl(str(folder / "svamp_train.json")))
  right = wrong = missing = 0
  for example in train:
    [chain] = chains[example.id]
    answer = recorded.read_answer(chain.answer_text, example, spec.answer_type)
    if answer is None:
      missing += 1
    elif answer == example.answer:
      right += 1
    else:
      wrong += 1
  assert (right, wrong, missing) == count


def test_jsonl_chains_through_teach_dataset(tmp_path):
  data = tmp_path / "mc"
  data.mkdir()
  rows = [{"id": "q1", "question": "What holds ink?", "choices": ["pen", "rock"],
           "answer": "A"},
          {"id": "q2", "question": "What is hard?", "choices": ["wool", "rock"],
           "answer": "B"},
          {"id": "q3", "question": "What is soft?", "choices": ["wool", "rock"],
           "answer": "A"}]
  (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (data / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
  chains = tmp_path / "chains.jsonl"
  chains.write_text("\n".join(json.dumps(r) for r in [
      {"id": "q1", "completion": "Pens hold ink. So the answer is (A) pen.\n\nQ: more"},
      {"id": "q1", "rationale": "Rocks hold ink.", "answer": "B"},
      {"id": "q2", "rationale": "Rocks are hard. Therefore, the answer is rock."},
  ]) + "\n")
  out = tmp_path / "out"
  summary = teach_lib.teach_dataset(
      dataset="mc_jsonl", dataset_path=str(data), split="train", method="finetune_cot",
      teacher="recorded", output_dir=str(out), progress=False,
      recorded=recorded.RecordedSettings(path=str(chains)))
  # q1: two samples, the first right; q2: right (by the option's text); q3: none.
  assert (summary.examples, summary.samples, summary.kept) == (3, 4, 2)
  assert summary.dropped == {"answer differs from gold": 1, "no recorded chain": 1}
  kept = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
  assert [(r["id"], r["rationale"]) for r in kept] == [("q1", "Pens hold ink."),
                                                       ("q2", "Rocks are hard.")]
  with pytest.raises(errors.UserError, match="recorded"):
    teach_lib.teach_dataset(dataset="mc_jsonl", dataset_path=str(data), split="train",
                            method="tinythinker", teacher="recorded",
                            output_dir=str(tmp_path / "o2"), progress=False,
                            recorded=recorded.RecordedSettings(path=str(chains)))


def test_bad_chain_files_name_the_line(tmp_path):
  bad = tmp_path / "c.jsonl"
  bad.write_text('{"id": "q1", "completion": "x"}\n{"id": "q2"}\n')
  with pytest.raises(errors.DataError, match=r"c.jsonl:2"):
    recorded.read_chains(str(bad))
  with pytest.raises(errors.UserError, match="RecordedSettings.path"):
    recorded.read_chains("")


def test_answer_only_students_need_no_teacher(tmp_path):
  """Vanilla's records are the dataset's questions with their gold answers: no
  teacher is asked (an unreachable endpoint is never called), none is dropped."""
  from tinythinker_jax.data import schema
  from tinythinker_jax.reasoning import formats, registry
  from tinythinker_jax.teacher.client import TeacherConfig
  assert registry.get("vanilla").method == "answers"
  out = tmp_path / "answers"
  summary = teach_lib.teach_dataset(
      dataset="coin_flip", split="train", method="answers", teacher="openai",
      teacher_config=TeacherConfig(base_url="http://127.0.0.1:9/v1"), max_examples=50,
      output_dir=str(out), progress=False)
  assert (summary.examples, summary.kept, summary.dropped) == (50, 50, {})
  records = schema.read_records(str(out / "records.jsonl"), schema.RationaleRecord)
  train = datasets.load_dataset("coin_flip", "", 0)["train"][:50]
  assert [(r.id, r.answer) for r in records] == [(e.id, e.answer) for e in train]
  [pair] = formats.render_record(records[0], formats.Format.VANILLA, None)
  assert pair["targets"] == train[0].answer
