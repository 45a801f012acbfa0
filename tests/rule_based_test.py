"""The rule-based teacher (exact and noisy), the new tasks' loaders, and the
rejection-sampling data built from sampled chains."""

import collections

import pytest

from tinythinker_jax.data import datasets
from tinythinker_jax.data.schema import (YES_NO_CHOICES, AnswerType, Choice, Example,
                                         SampledChain, SampledQuestion)
from tinythinker_jax.reasoning import formats, rejection
from tinythinker_jax.teacher import pipelines, rule_based

SHUFFLED = "bigbench/tracking_shuffled_objects"
QUESTION = ("Alice, Bob, and Claire are playing a game. At the start of the game, they are "
            "each holding a ball: Alice has a orange ball, Bob has a white ball, and Claire "
            "has a blue ball. \n\nAs the game progresses, pairs of players trade balls. "
            "First, Alice and Bob swap balls. Then, Bob and Claire swap balls. Finally, "
            "Alice and Bob swap balls. At the end of the game, Bob has the")
OPTIONS = (Choice("A", "orange ball"), Choice("B", "white ball"), Choice("C", "blue ball"))


def _shuffled(answer="B"):
  return Example(id="s", question=QUESTION, answer=answer, choices=OPTIONS, task="x")


def test_shuffled_objects_rationales_by_hand():
  d = rule_based.derive(_shuffled(), AnswerType.LETTER, rule_based.RuleBasedSettings(), 0)
  # Alice/Bob: A white, B orange; Bob/Claire: B blue, C orange; Alice/Bob: A blue, B white.
  assert d.rationale == (
      "Alice and Bob swap : Alice white ball , Bob orange ball . "
      "Bob and Claire swap : Bob blue ball , Claire orange ball . "
      "Alice and Bob swap : Alice blue ball , Bob white ball . "
      "At the end , Bob has white ball .")
  assert d.answer == "B" and d.recall == d.rationale
  assert d.analyses == {"A": "Bob ends with white ball , not orange ball .",
                        "B": "Bob ends with white ball , which is this option .",
                        "C": "Bob ends with white ball , not blue ball ."}
  outcome = pipelines.rule_based_outcome(_shuffled(), pipelines.Method.TINYTHINKER,
                                         AnswerType.LETTER)
  [record] = outcome.kept
  pairs = formats.stage_pairs(record.example, record.recall, record.analyses)
  assert pairs[formats.Stage.SUMMARIZE][0].targets == "So the answer is option B."


@pytest.mark.parametrize("count", [3, 5, 7])
def test_the_solver_derives_every_real_bigbench_question(shared_data, count):
  splits = datasets.load_dataset(f"shuffled_objects_{count}", str(shared_data / SHUFFLED))
  examples = [e for split in splits.values() for e in split]
  assert len(examples) == {3: 750, 5: 1250, 7: 1750}[count]
  assert all(len(e.choices) == count and not e.choices[0].text.endswith(".")
             for e in examples)
  exact = rule_based.RuleBasedSettings()
  assert all(rule_based.derive(e, AnswerType.LETTER, exact, 0).answer == e.answer
             for e in examples)
  # 70/30 with a seeded tenth of train for validation (Fine-tune-CoT's rule).
  assert len(splits["test"]) == round(0.3 * len(examples))
  assert len(splits["validation"]) == (len(examples) - len(splits["test"])) // 10


def test_the_same_teacher_reads_fine_tune_cot_files(shared_data):
  root = str(shared_data / "finetune_cot")
  exact = rule_based.RuleBasedSettings()
  for task, answer_type in (("tracking_shuffled_objects", AnswerType.LETTER),
                            ("coin_flip", AnswerType.YES_NO)):
    examples = datasets.load_dataset(f"finetune_cot/{task}", root)["test"]
    assert all(rule_based.derive(e, answer_type, exact, 0).answer == e.answer
               for e in examples)
  # Last Letter: right wherever the file's answer is right. Fine-tune-CoT's file has
  # a few wrong answers (a letter missing), which the answer filter drops.
  examples = datasets.load_dataset("finetune_cot/last_letter_concatenation", root)["train"]
  for e in examples:
    words = e.question.split('"')[1].split()
    derived = rule_based.derive(e, AnswerType.TEXT, exact, 0).answer
    assert derived == "".join(w[-1] for w in words).lower()


def test_a_noisy_teacher_misreads_steps_at_its_rate_and_is_filtered():
  examples = datasets.load_dataset("coin_flip_longer", seed=0)["train"][:400]
  noisy = rule_based.RuleBasedSettings(num_samples=4, step_error_rate=0.2)
  derivations = [rule_based.derive(e, AnswerType.YES_NO, noisy, i)
                 for e in examples for i in range(4)]
  steps = sum(e.question.count(" the coin.") for e in examples) * 4
  rate = sum(d.misread_steps for d in derivations) / steps
  assert abs(rate - 0.2) < 0.02
  # A step misread reasons on consistently: the answer follows the parity of the
  # misreads, so exactly the derivations with an even count are right.
  for e, d in zip([e for e in examples for _ in range(4)], derivations):
    assert (d.answer == e.answer) == (d.misread_steps % 2 == 0)
  # Samples differ per sample index, and repeat exactly for the same seed.
  assert len({d.rationale for d in derivations[:4]}) > 1
  assert rule_based.derive(examples[0], AnswerType.YES_NO, noisy, 2) == derivations[2]
  # Fine-tune-CoT keeps the right answers only, each with its errors recorded.
  outcome = pipelines.rule_based_outcome(examples[0], pipelines.Method.FINETUNE_COT,
                                         AnswerType.YES_NO, noisy)
  kept = [i for i in range(4) if derivations[i].answer == examples[0].answer]
  assert [r.sample_index for r in outcome.kept] == kept
  assert [r.extra["teacher_errors"]["misread_steps"] for r in outcome.kept] == [
      derivations[i].misread_steps for i in kept]
  assert len(outcome.dropped) == 4 - len(kept)
  assert all(d["reason"].startswith("answer differs from gold") for d in outcome.dropped)
  # Wrong answers after a right derivation: dropped by both methods' filters;
  # Distilling Step-by-Step keeps the chain under the gold label.
  wrong = rule_based.RuleBasedSettings(answer_error_rate=1.0)
  for method in (pipelines.Method.FINETUNE_COT, pipelines.Method.TINYTHINKER):
    outcome = pipelines.rule_based_outcome(examples[1], method, AnswerType.YES_NO, wrong)
    assert not outcome.kept and outcome.teacher_correct == 0
  outcome = pipelines.rule_based_outcome(examples[1], pipelines.Method.STEP_BY_STEP,
                                         AnswerType.YES_NO, wrong)
  assert [r.answer for r in outcome.kept] == [examples[1].answer]
  assert outcome.teacher_correct == 0 and outcome.kept[0].extra["teacher_answer"] != \
      examples[1].answer
  with pytest.raises(ValueError, match="a rate in"):
    rule_based.RuleBasedSettings(step_error_rate=1.5)


def test_tinythinker_keeps_one_near_duplicate_recall_per_question():
  examples = datasets.load_dataset("coin_flip_longer", seed=0)["train"][:50]
  noisy = rule_based.RuleBasedSettings(num_samples=4, step_error_rate=0.2)
  reasons = collections.Counter()
  for e in examples:
    outcome = pipelines.rule_based_outcome(e, pipelines.Method.TINYTHINKER,
                                           AnswerType.YES_NO, noisy)
    assert len(outcome.kept) <= 1  # recalls differ by a digit: near-duplicates
    for r in outcome.kept:
      assert r.label == e.gold_label
    reasons.update(pipelines._reason_kind(d["reason"]) for d in outcome.dropped)
  assert set(reasons) <= {"teacher disagrees with the label",
                          "near-duplicate key information"}
  assert reasons["teacher disagrees with the label"] > 0


def test_shuffled_objects_loader_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no five_objects/task.json"):
    datasets.load_dataset("shuffled_objects_5", str(tmp_path))
  (tmp_path / "task.json").write_text(
      '{"examples": [{"input": "q", "target_scores": {"a.": 1, "b.": 0}}]}')
  with pytest.raises(ValueError, match="shuffled_objects_3 expects 3"):
    datasets.load_dataset("shuffled_objects_3", str(tmp_path / "task.json"))


def _chain(recall, answer, sampled="recall", **analyses):
  return SampledChain(sampled, recall, analyses or {"A": "x.", "B": "y."}, answer)


def test_rejection_sampling_data_from_hand_made_chains():
  question = Example(id="q1", question="Is it?", answer="yes", choices=YES_NO_CHOICES)
  other = Example(id="q2", question="Or not?", answer="no", choices=YES_NO_CHOICES)
  sampled = [
      SampledQuestion("q1", "A", (
          _chain("Flipped 2 times.", "A"),                    # kept
          _chain("Flipped 3 times.", "B"),                    # wrong answer
          _chain("Flipped 2 times.", "A"),                    # duplicate of the first
          _chain(" Flipped 2 times. ", "A", A="x. ", B="y."),  # same after stripping
          _chain("Flipped 4 times.", "A", "analyze"),         # kept (analyze samples)
          _chain("Flipped 6 times.", "A", A="only A"),        # an option unanalysed
          _chain("", "A"),                                    # no recall
          _chain("Flipped 8 times.", None))),                 # no answer
      SampledQuestion("q2", "B", (_chain("Flipped 1 time.", "A"),))]  # no correct chain
  records = rejection.records([question, other], sampled,
                              provenance={"policy": "p"})
  assert [(r.id, r.recall, r.label, r.provenance["sampled_stage"])
          for r in records] == [("q1", "Flipped 2 times.", "A", "recall"),
                                ("q1", "Flipped 4 times.", "A", "analyze")]
  assert records[0].analyses == {"A": "x.", "B": "y."}
  assert records[0].provenance["policy"] == "p"
  assert records[0].method == "tinythinker"
  # Rendered as the ordinary three stages, as teacher records are.
  rendered = formats.render_record(records[1], formats.Format.TINYTHINKER,
                                   formats.Stage.RECALL)
  assert rendered[0]["targets"] == "Flipped 4 times."
  assert len(rejection.records([question, other], sampled, max_per_question=1)) == 1
  with pytest.raises(KeyError, match="not among the examples"):
    rejection.records([other], sampled)
