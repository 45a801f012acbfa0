"""Dataset loaders on the real files in ../shared/data, splits, generators."""

import json

import numpy as np
import pytest

from tinythinker_jax.data import datasets, loaders, synthetic
from tinythinker_jax.data.schema import AnswerType, DataError
from tinythinker_jax.reasoning import formats

# Example counts of the Fine-tune-CoT task files as published.
FTC_COUNTS = {"single_eq": 508, "addsub": 395, "multiarith": 600, "gsm8k": 1319,
              "svamp": 1000, "date_understanding": 369, "tracking_shuffled_objects": 750,
              "last_letter_concatenation": 500, "coin_flip": 500, "commonsense_qa": 10962,
              "strategy_qa": 2290}


def test_csqa_counts_and_tinythinker_split(shared_data):
  path = shared_data / "tinythinker" / "csqa"
  train = loaders.load_arc_style_jsonl(str(path / "train_rand_split.jsonl"), "csqa")
  dev = loaders.load_arc_style_jsonl(str(path / "dev_rand_split.jsonl"), "csqa")
  assert (len(train), len(dev)) == (9741, 1221)
  first = train[0]
  assert first.answer == "A" and first.labels == ("A", "B", "C", "D", "E")
  assert first.question.startswith("The sanctions against the school")
  splits = datasets.load_dataset("csqa", str(path), seed=0)
  assert [len(splits[s]) for s in datasets.SPLITS] == [9741 - 1221, 1221, 1221]
  assert splits["test"] == dev
  train_ids = {e.id for e in splits["train"]}
  assert not train_ids & {e.id for e in splits["validation"]}
  again = datasets.load_dataset("csqa", str(path), seed=0)
  assert [e.id for e in again["validation"]] == [e.id for e in splits["validation"]]
  other = datasets.load_dataset("csqa", str(path), seed=1)
  assert [e.id for e in other["validation"]] != [e.id for e in splits["validation"]]


def test_obqa_official_splits(shared_data):
  splits = datasets.load_dataset("obqa", str(shared_data / "tinythinker" / "obqa"))
  assert [len(splits[s]) for s in datasets.SPLITS] == [4957, 500, 500]
  assert splits["train"][0].labels == ("A", "B", "C", "D")


def test_bigbench_strategyqa(shared_data):
  path = shared_data / "bigbench" / "strategyqa" / "task.json"
  examples = loaders.load_bigbench_task(str(path), "strategyqa")
  assert len(examples) == 2290
  assert examples[0].answer == "yes" and examples[0].gold_label == "A"
  assert examples[0].rationale.startswith("College commencement ceremonies")
  splits = datasets.load_dataset("strategyqa", str(path))
  assert [len(splits[s]) for s in datasets.SPLITS] == [1832, 229, 229]


@pytest.mark.parametrize("name,count,options", [("three_objects", 750, 3),
                                                ("five_objects", 1250, 5),
                                                ("seven_objects", 1750, 7)])
def test_bigbench_multiple_choice(shared_data, name, count, options):
  path = shared_data / "bigbench" / "tracking_shuffled_objects" / name / "task.json"
  examples = loaders.load_bigbench_task(str(path))
  assert len(examples) == count
  assert all(len(e.choices) == options and e.gold_label in e.labels for e in examples)


@pytest.mark.parametrize("task", sorted(FTC_COUNTS))
def test_finetune_cot_task_files(shared_data, task):
  root = shared_data / "finetune_cot"
  splits = datasets.load_dataset(f"finetune_cot/{task}", str(root))
  total = sum(len(v) for v in splits.values())
  assert total == FTC_COUNTS[task]
  with open(root / "split" / f"{task}__default.json") as f:
    index = json.load(f)
  assert len(splits["test"]) == len(index["test"])
  spec = datasets.get_spec(f"finetune_cot/{task}")
  raw = json.loads((root / "dataset" / f"{loaders.FINETUNE_COT_TASKS[task]}.json")
                   .read_text())
  example = splits["test"][0]
  # GSM8K ships as its test part only, so its split indices are offset by train's size.
  original = raw[0] if len(raw) == len(index["test"]) else raw[index["test"][0]]
  if spec.answer_type is AnswerType.LETTER:
    # Stem + parsed choices re-render Fine-tune-CoT's question exactly.
    assert formats.finetune_cot_question(example) == original["question"]
    assert example.answer in example.labels
  elif spec.answer_type is AnswerType.NUMBER:
    assert float(example.answer) == float(original["answer"].replace(",", ""))
  elif spec.answer_type is AnswerType.YES_NO:
    assert example.answer in ("yes", "no") and example.gold_label in ("A", "B")


def test_finetune_cot_questions_roundtrip_for_every_letter_task(shared_data):
  root = shared_data / "finetune_cot" / "dataset"
  for task in ("commonsense_qa", "date_understanding", "tracking_shuffled_objects"):
    raw = json.loads((root / f"{task}.json").read_text())
    examples = loaders.load_finetune_cot_task(str(root / f"{task}.json"), task)
    for record, example in zip(raw, examples):
      assert formats.finetune_cot_question(example) == record["question"]


def test_official_formats_from_documented_schemas(tmp_path):
  """GSM8K, AQuA, SVAMP and StrategyQA official files (no copies in shared/)."""
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "train.jsonl").write_text(
      json.dumps({"question": "Q1?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}) + "\n")
  (tmp_path / "gsm8k" / "test.jsonl").write_text(
      json.dumps({"question": "Q2?", "answer": "x\n#### -2"}) + "\n")
  gsm = datasets.load_dataset("gsm8k", str(tmp_path / "gsm8k"))
  assert gsm["train"][0].answer == "1007" and gsm["test"][0].answer == "-2"
  assert gsm["train"][0].rationale.startswith("3 + 4")

  aqua = tmp_path / "aqua.json"
  aqua.write_text(json.dumps({"question": "2+2?", "options": ["A)3", "B)4", "C)5",
                                                               "D)6", "E)7"],
                              "rationale": "Add.", "correct": "B"}) + "\n")
  [ex] = loaders.load_aqua_json_lines(str(aqua))
  assert ex.answer == "B" and ex.choice_text("B") == "4"

  svamp = tmp_path / "SVAMP.json"
  svamp.write_text(json.dumps([{"ID": "chal-1", "Body": "Each pack costs 76 dollars.",
                                "Question": "How much for 2 packs?",
                                "Equation": "( 76.0 * 2.0 )", "Answer": 152.0,
                                "Type": "Multiplication"}]))
  [ex] = loaders.load_svamp_json(str(svamp))
  assert ex.answer == "152" and ex.question.endswith("How much for 2 packs?")

  sqa = tmp_path / "strategyqa_train.json"
  sqa.write_text(json.dumps([{"qid": "q1", "term": "t", "description": "d",
                              "question": "Is water wet?", "answer": False,
                              "facts": ["Fact one.", "Fact two."],
                              "decomposition": []}]))
  [ex] = loaders.load_strategyqa_json(str(sqa))
  assert (ex.answer, ex.gold_label, ex.rationale) == ("no", "B", "Fact one. Fact two.")


def test_generic_schema_and_errors_name_file_and_line(tmp_path):
  good = tmp_path / "mine.jsonl"
  good.write_text(
      json.dumps({"question": "Pick b", "choices": ["a", "b"], "answer": "b"}) + "\n" +
      json.dumps({"id": "x", "question": "Pick", "choices": [{"label": "A", "text": "t"}],
                  "answer": "A", "rationale": "because"}) + "\n")
  first, second = loaders.load_generic_mc_jsonl(str(good))
  assert first.answer == "B" and second.id == "x" and second.rationale == "because"
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": "a"}) + "\n"
                 + json.dumps({"question": "q"}) + "\n")
  with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'choices'"):
    loaders.load_generic_mc_jsonl(str(bad))
  torn = tmp_path / "torn.jsonl"
  torn.write_text('{"id": "1", "question": {"stem": "s", "choices": []}}\n{"id": ')
  with pytest.raises(DataError, match=r"torn.jsonl:1: 'choices' must be a non-empty"):
    loaders.load_arc_style_jsonl(str(torn), "csqa")
  with pytest.raises(KeyError, match="unknown dataset 'nope'"):
    datasets.load_dataset("nope", "")
  with pytest.raises(FileNotFoundError, match="train_rand_split.jsonl"):
    datasets.load_dataset("csqa", str(tmp_path))


def test_synthetic_generators_are_seeded_and_exact():
  a = datasets.load_dataset("coin_flip", seed=3)
  b = datasets.load_dataset("coin_flip", seed=3)
  assert a == b and len(a["train"]) == 2000
  for ex in a["train"][:200]:
    flips = ex.question.count(" flips the coin.")
    assert ex.answer == ("yes" if flips % 2 == 0 else "no")
    assert ex.rationale.count("flips :") == flips
  letters = datasets.load_dataset("last_letter", seed=0)["test"]
  for ex in letters[:50]:
    words = ex.question.split('"')[1].split()
    assert ex.answer == "".join(w[-1] for w in words).lower()
  flip = synthetic.coin_flip(np.random.default_rng(0), 9)
  assert len(flip.steps) == 9


def test_numeric_and_lower_case_labels_become_letters(tmp_path):
  """ARC's files label some questions 1..4; every format here reads letters.
  The original labels stay in `source`."""
  arc = tmp_path / "arc.jsonl"
  arc.write_text(json.dumps({
      "id": "Mercury_1", "answerKey": "3",
      "question": {"stem": "Which is a gas?", "choices": [
          {"label": "1", "text": "ice"}, {"label": "2", "text": "rock"},
          {"label": "3", "text": "steam"}, {"label": "4", "text": "wood"}]}}) + "\n")
  [example] = loaders.load_arc_style_jsonl(str(arc), "arc")
  assert example.labels == ("A", "B", "C", "D") and example.answer == "C"
  assert example.choice_text("C") == "steam"
  assert example.source == f"{arc}:1 (labels 1,2,3,4 -> A,B,C,D)"
  assert formats.options_line(example) == "(A) ice (B) rock (C) steam (D) wood"
  generic = tmp_path / "mc.jsonl"
  generic.write_text(json.dumps({"question": "q", "answer": "b", "choices": [
      {"label": "a", "text": "x"}, {"label": "b", "text": "y"}]}) + "\n")
  [example] = loaders.load_generic_mc_jsonl(str(generic))
  assert (example.labels, example.answer) == (("A", "B"), "B")
  assert example.source.endswith("(labels a,b -> A,B)")


def test_unlabelled_rows_are_counted_by_data_and_refused_by_name(tmp_path):
  """A generic JSONL line without `answer`: `tinythinker data` counts it (it
  used to crash sorting None among the answers), and the stages that need a gold
  answer refuse it naming its file and line."""
  import subprocess
  import sys
  from tinythinker_jax.stages import teach as run
  path = tmp_path / "q.jsonl"
  lines = [{"question": f"q{i}?", "choices": ["a", "b"], "answer": "a"} for i in range(9)]
  lines.insert(4, {"question": "q?", "choices": ["a", "b"]})
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  text = run.describe_dataset("mc_jsonl", str(path))
  splits = datasets.load_dataset("mc_jsonl", str(path))
  holder = next(s for s, examples in splits.items()
                if any(e.answer is None for e in examples))
  assert f"1 without an answer (first: {path}:5)" in text
  with pytest.raises(DataError, match=rf"{path}:5: no answer \(mc_jsonl {holder}: 1 of"):
    datasets.load_split("mc_jsonl", str(path), holder)
  result = subprocess.run([sys.executable, "-m", "tinythinker_jax.cli.main", "data",
                           "--dataset=mc_jsonl", f"--path={path}"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "1 without an answer" in result.stdout
