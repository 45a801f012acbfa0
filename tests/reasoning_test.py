"""Answer extraction, metrics and rationale formats (docs/methods.md's rules, by hand)."""

import pytest

from tinythinker_jax.data.schema import YES_NO_CHOICES, AnswerType, Example, labelled
from tinythinker_jax.reasoning import answers, formats

L, N, Y, T = AnswerType.LETTER, AnswerType.NUMBER, AnswerType.YES_NO, AnswerType.TEXT


@pytest.mark.parametrize("text,kind,labels,expected", [
    ("Blotters absorb ink. --> E", L, "ABCDE", "E"),
    ("Option A is tempting, but C is right", L, "ABCDE", "C"),  # no arrow: last
    ("Because of D --> B, not C", L, "ABCDE", "B"),  # first after the arrow
    ("Bob Dylan. --> Elvis", L, "ABCDE", None),  # capitals inside words
    ("Both. --> E", L, "ABCDE", "E"),
    ("--> F", L, "ABCDEF", "F"),
    ("--> F", L, "ABC", None),  # Shuffled Objects only has A-C
    ("He has 1,234 apples and gives 34. --> 1,200", N, "", "1200"),
    ("x = -3.5 then 7", N, "", "7"),
    ("no numbers here", N, "", None),
    ("I know it is not. --> No", Y, "", "no"),
    ("Yes, and then no. Final: yes", Y, "", "yes"),
    ('The letters are "a" and "b". --> "ab".', T, "", "ab"),
])
def test_extract_answer(text, kind, labels, expected):
  assert answers.extract_answer(text, kind, tuple(labels)) == expected


AIRPORT = labelled(["suitcase", "bedroom", "shop", "car", "airport"])


@pytest.mark.parametrize("reply,expected", [
    # Real chat replies to Fine-tune-CoT's "...Therefore, the answer is".
    (" (E) airport. Drawstring bags are often used at Departures.", "E"),
    ("The correct answer is (E) airport. Drawstring bags are common.", "E"),
    ("Therefore, the answer is E.", "E"),
    ("**Answer: C**\n\nBecause shops sell Drawstring bags.", "C"),
    ("A drawstring bag would most likely be found at the (E).", "E"),  # "A" article
    ("A is the best choice here.", "A"),
    ("I think it's D, the car.", "D"),
    ("Looking at options A to E, the answer is C because shops sell them.", "C"),
    (" an airport, where travellers carry bags.", "E"),  # the option's text
    ("Bedroom.", "B"),
    ("in the car", "D"),
    ("Nobody knows.", None),
])
def test_teacher_answers_from_chat_replies(reply, expected):
  assert answers.extract_teacher_answer(reply, L, "ABCDE", AIRPORT) == expected


@pytest.mark.parametrize("reply,expected", [
    (" no. Aristotle lived before laptops.", "no"),
    ("The answer is yes, no doubt.", "yes"),
    (" 42. So 42 - 7 = 35 is not it.", "42"),
])
def test_teacher_answers_of_other_kinds(reply, expected):
  kind = N if expected.isdigit() else Y
  assert answers.extract_teacher_answer(reply, kind, ()) == expected


def test_number_comparison_uses_float_tolerance():
  assert answers.answers_match("43", "43.0", N)
  assert answers.answers_match("0.1", "0.1000000001", N)
  assert not answers.answers_match("43.01", "43", N)
  assert not answers.answers_match(None, "43", N)


def test_scores_accuracy_contains_and_format():
  outputs = ["a --> 7", "b 7 --> 8", "no arrow 9", "--> nothing"]
  scores = answers.score(outputs, ["7", "7", "9", "1"], N)
  assert scores.count == 4
  assert scores.accuracy == pytest.approx(2 / 4)  # "7" and "9" (last candidate, no arrow)
  # The reference evaluator's candidates come from after the arrow when it has one.
  assert scores.contains_answer == pytest.approx(2 / 4)
  assert scores.correct_format == pytest.approx(2 / 4)


def test_tinythinker_answer():
  assert answers.extract_tinythinker_answer("So the answer is option C.") == "C"
  assert answers.extract_tinythinker_answer("So the answer is option C") is None
  parsed = formats.parse_summary("So the answer is option F.", ("A", "B", "C"))
  assert not parsed.ok and "not one of ABC" in parsed.error


CSQA = Example(id="1", question="What absorbs ink?", answer="E",
               choices=labelled(["shirt pocket", "hand", "inkwell", "drawer", "blotter"]))


def test_tinythinker_stage_strings():
  recall = "A tool absorbs extra ink"
  analyses = {c.label: f"reason {c.label}." for c in CSQA.choices}
  pairs = formats.stage_pairs(CSQA, recall, analyses)
  head = "What absorbs ink?\n(A) shirt pocket (B) hand (C) inkwell (D) drawer (E) blotter"
  [r] = pairs[formats.Stage.RECALL]
  assert r.inputs == head + "\nRecall:" and r.targets == "A tool absorbs extra ink."
  assert len(pairs[formats.Stage.ANALYZE]) == 5
  a = pairs[formats.Stage.ANALYZE][2]
  assert a.inputs == head + "\nRecall: A tool absorbs extra ink.\nAnalyze: For option C,"
  assert a.targets == "reason C."
  [s] = pairs[formats.Stage.SUMMARIZE]
  assert s.inputs == (head + "\nRecall: A tool absorbs extra ink.\nAnalyze: For option A, "
                      "reason A. For option B, reason B. For option C, reason C. For "
                      "option D, reason D. For option E, reason E.\nSummarize:")
  assert s.targets == "So the answer is option E."


@pytest.mark.parametrize("fmt,stages,summary_input", [
    (formats.Format.SUMMARIZE_ONLY, {"summarize"}, "Q?\n(A) yes (B) no\nSummarize:"),
    (formats.Format.RECALL_SUMMARIZE, {"recall", "summarize"},
     "Q?\n(A) yes (B) no\nRecall: r.\nSummarize:"),
    (formats.Format.ANALYZE_SUMMARIZE, {"analyze", "summarize"},
     "Q?\n(A) yes (B) no\nAnalyze: For option A, x For option B, y\nSummarize:"),
])
def test_ablations(fmt, stages, summary_input):
  ex = Example(id="s", question="Q?", answer="no", choices=YES_NO_CHOICES)
  pairs = formats.stage_pairs(ex, "r", {"A": "x", "B": "y"}, fmt)
  assert {s.value for s in pairs} == stages
  assert pairs[formats.Stage.SUMMARIZE][0].inputs == summary_input
  assert pairs[formats.Stage.SUMMARIZE][0].targets == "So the answer is option B."


def test_finetune_cot_and_vanilla_and_step_by_step():
  pair = formats.finetune_cot(CSQA, "Blotters absorb ink.")
  assert pair.inputs == ("What absorbs ink? Answer choices: (A) shirt pocket, (B) hand, "
                         "(C) inkwell, (D) drawer, (E) blotter.")
  assert pair.targets == "Blotters absorb ink. --> E"
  assert formats.vanilla(CSQA).targets == "E"
  parsed = formats.parse_finetune_cot(pair.targets, L)
  assert parsed.ok and parsed.value == ("Blotters absorb ink.", "E")
  assert not formats.parse_finetune_cot("no arrow", L).ok
  # Distilling Step-by-Step: its CommonsenseQA input and the gold option's text.
  sbs = formats.step_by_step(CSQA, "Blotters absorb ink.")
  predict, explain = sbs[formats.Stage.PREDICT], sbs[formats.Stage.EXPLAIN]
  assert predict.inputs == ("predict: What absorbs ink?\nAnswer Choices:\n(a) shirt pocket\n"
                            "(b) hand\n(c) inkwell\n(d) drawer\n(e) blotter")
  assert explain.inputs == predict.inputs.replace("predict: ", "explain: ")
  assert (predict.targets, explain.targets) == ("blotter", "Blotters absorb ink.")
  assert formats.step_by_step_prompt(CSQA) == predict.inputs
