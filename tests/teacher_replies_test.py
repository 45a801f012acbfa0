"""Reading TinyThinker teacher replies: the paper's text, chat models' variants, JSON.

The replies are written the way open instruct models answer the TinyThinker
request (bullets, bold, numbered lists of option texts, `A.` / `(A)` / `A)` /
`Option A:` labels, a closing "The correct answer is ..."); the expected
fields are read off each reply by hand.
"""

import json

import pytest

from tinythinker_jax.data.schema import Example, labelled
from tinythinker_jax.teacher import prompts, replies

INK = {"Q": "What absorbs ink?", "Options": "A. shirt pocket, B. hand, C. blotter",
       "Key Information": "A tool absorbs ink.",
       "Explanations": ["A is incorrect. Because pockets stain.",
                        "B is incorrect. Because hands smudge.",
                        "C is correct. Because blotters absorb ink."]}
FOX = Example(id="fox", question="Where would a fox look for food?", answer="C",
              choices=labelled(["race track", "populated areas", "natural habitat",
                                "dense forest", "henhouse"]))


def verdicts_of(text, structured=False, example=FOX):
  parsed = replies.parse_reply(text, example, structured)
  assert parsed.ok, parsed.error
  key_info, verdicts = parsed.value
  return key_info, {l: (v.correct, v.reason) for l, v in verdicts.items()}


def test_the_papers_format():
  key, got = verdicts_of(
      "Key Information: Foxes hunt prey in the wild.\n"
      "Explanations: C is correct. Because a natural habitat has prey.\n"
      "A is incorrect. Because race tracks have no prey.\n"
      "B is incorrect. Although populated areas have food, foxes avoid people.\n"
      "D is incorrect. While forests have food, it is less specific.\n"
      "E is incorrect. Because henhouses are guarded.")
  assert key == "Foxes hunt prey in the wild."
  assert got == {"A": (False, "race tracks have no prey."),
                 "B": (False, "Although populated areas have food, foxes avoid people."),
                 "C": (True, "a natural habitat has prey."),
                 "D": (False, "While forests have food, it is less specific."),
                 "E": (False, "henhouses are guarded.")}


def test_bullets_bold_and_option_text_echoes():
  key, got = verdicts_of(
      "**Key Information:**\n- Foxes are wild animals.\n- They look for food where "
      "prey lives.\n\n**Explanations:**\n"
      "A. race track - incorrect. Race tracks have no prey for foxes.\n"
      "B. populated areas - Incorrect: people scare foxes away.\n"
      "C. natural habitat - **Correct**. Foxes find prey in their natural habitat.\n"
      "D. dense forest - incorrect, it is too specific compared to a habitat.\n"
      "E. henhouse - INCORRECT. Farmers protect henhouses.")
  assert key == "Foxes are wild animals. They look for food where prey lives."
  assert got["C"] == (True, "Foxes find prey in their natural habitat.")
  assert got["B"] == (False, "people scare foxes away.")
  assert got["D"] == (False, "it is too specific compared to a habitat.")
  assert [l for l, (c, _) in got.items() if c] == ["C"]


@pytest.mark.parametrize("opener", ["Option {l}:", "({l})", "{l})", "{l}:", "{l}.",
                                    "- **{l}.**", "Option {l} -"])
def test_every_label_form(opener):
  lines = ["Key Information: Foxes hunt prey."]
  for choice in FOX.choices:
    verdict = "correct" if choice.label == "C" else "incorrect"
    lines.append(f"{opener.format(l=choice.label)} {choice.text} is {verdict}. Because "
                 f"reason {choice.label} holds.")
  key, got = verdicts_of("\n".join(lines))
  assert key == "Foxes hunt prey."
  assert got == {c.label: (c.label == "C", f"reason {c.label} holds.") for c in FOX.choices}


def test_numbered_option_texts_and_a_closing_answer_line():
  key, got = verdicts_of(
      "Key Information: A fox needs to find food in the wild.\n\n"
      "1. **Race track**: Foxes do not hunt at race tracks, so this is incorrect.\n"
      "2. **Populated areas**: This is wrong because foxes avoid people.\n"
      "3. **Natural habitat**: This is correct because prey lives there.\n"
      "4. **Dense forest**: Not the best answer since it is narrower than a habitat.\n"
      "5. **Henhouse**: Incorrect, henhouses are protected.\n\n"
      "The correct answer is C. natural habitat.")
  assert key == "A fox needs to find food in the wild."  # "A fox" is no option line.
  assert got["A"] == (False, "Foxes do not hunt at race tracks, so this is incorrect.")
  assert got["B"] == (False, "foxes avoid people.")
  assert got["C"] == (True, "prey lives there.")
  assert got["D"] == (False, "it is narrower than a habitat.")


def test_verdicts_taken_from_the_closing_answer_when_lines_have_none():
  _, got = verdicts_of(
      "Key Information: Foxes hunt prey.\nA. race track: no prey there.\n"
      "B. populated areas: people scare foxes.\nC. natural habitat: prey lives there.\n"
      "D. dense forest: too narrow.\nE. henhouse: protected by farmers.\n"
      "So the correct answer is (C).")
  assert [l for l, (c, _) in got.items() if c] == ["C"]
  assert got["E"] == (False, "protected by farmers.")


def test_key_information_over_several_lines_and_explanations_that_wrap():
  key, got = verdicts_of(
      "Key Information:\nThe question asks where a fox\nwould search for food.\n"
      "Explanations:\nA is incorrect. Because race tracks\nhave no prey.\n"
      "B is incorrect. Because people.\nC is correct. Because prey.\n"
      "D is incorrect. Because narrow.\nE is incorrect. Because guarded.")
  assert key == "The question asks where a fox would search for food."
  assert got["A"] == (False, "race tracks have no prey.")


def structured_reply(verdicts, key="Foxes hunt prey in the wild."):
  return json.dumps({"key_information": key, "explanations": [
      {"option": l, "verdict": v, "explanation": f"Because reason {l}."}
      for l, v in verdicts]})


@pytest.mark.parametrize("structured,reply,reason", [
    (False, "Key Information: Foxes hunt.\nA is incorrect. Because no.\nC is correct. Because "
     "yes.", "no explanation for options B, D, E (last line: 'C is correct. Because yes.')"),
    (False, "Key Information: Foxes hunt.\nA. race track: maybe.\nB. populated areas: no "
     "prey.\nC. natural habitat: prey.\nD. dense forest: hm.\nE. henhouse: guarded.",
     "option A has no verdict: 'A. race track: maybe.'"),
    (False, "A is incorrect. Because no.",
     "no key information before 'A is incorrect. Because no.'"),
    (False, "Key Information: Foxes hunt.\nOptions: A. race track, B. populated areas\n"
     "A. race track - incorrect.\nB is incorrect. Because b.\nC is correct. Because c.\n"
     "D is incorrect. Because d.\nE is incorrect. Because e.",
     "option A has no explanation: 'A. race track - incorrect.'"),
    (True, '{"key_information": "Foxes hunt", "explanations": [{"option": "A", "verd',
     "reply is not valid JSON"),
    (True, structured_reply([("A", "incorrect"), ("C", "correct")]),
     "no explanation for options B, D, E"),
    (True, structured_reply([(l, "maybe") for l in "ABCDE"]),
     "option A: verdict 'maybe' is not correct/incorrect"),
    (True, structured_reply([(l, "incorrect") for l in "ABCDEF"]),
     "explanation for unknown option 'F'"),
])
def test_unreadable_replies_fail_naming_what_is_wrong(structured, reply, reason):
  """Text replies quote the line at fault; JSON replies name the schema's break."""
  parsed = replies.parse_reply(reply, FOX, structured=structured)
  assert not parsed.ok and parsed.error.startswith(reason), parsed.error


def test_structured_reply_and_rendering_back_to_the_papers_text():
  text = structured_reply([(l, "correct" if l == "C" else "incorrect") for l in "ABCDE"])
  key, got = verdicts_of(text, structured=True)
  assert key == "Foxes hunt prey in the wild." and got["C"] == (True, "reason C.")
  parsed = replies.parse_reply(text, FOX, True)
  assert replies.render_text(*parsed.value) == (
      "Key Information: Foxes hunt prey in the wild.\nExplanations: "
      "A is incorrect. Because reason A.\nB is incorrect. Because reason B.\n"
      "C is correct. Because reason C.\nD is incorrect. Because reason D.\n"
      "E is incorrect. Because reason E.")
  # The rendering is itself a reply in the paper's format.
  assert replies.parse_reply(replies.render_text(*parsed.value), FOX, False).value == \
      parsed.value


def test_schema_lists_every_option_once_in_order():
  schema = replies.rationale_schema(FOX, one_correct="none")
  items = schema["properties"]["explanations"]
  assert [i["properties"]["option"]["enum"] for i in items["prefixItems"]] == \
      [[l] for l in "ABCDE"]
  assert items["minItems"] == items["maxItems"] == 5 and items["items"] is False
  assert replies.response_format("json_object", schema) == {
      "response_format": {"type": "json_object", "schema": schema}}
  assert replies.response_format("json_schema", schema)["response_format"][
      "json_schema"]["schema"] == schema
  with pytest.raises(ValueError, match="structured output 'xml'"):
    replies.response_format("xml", schema)


def test_exemplars_as_turns_carry_their_hint_and_reply():
  exemplar = INK
  import numpy as np
  messages = prompts.tinythinker_messages(FOX, "C", "Instruction.", [exemplar], 1,
                                          np.random.default_rng(0), "turns", True)
  roles = [r for r, _ in messages]
  assert roles == ["system", "user", "assistant", "user"]
  assert messages[1][1] == ("What absorbs ink?\nOptions: A. shirt pocket, B. hand, "
                            "C. blotter\nKey Information:\nExplanations: C is correct. "
                            "Because\nA is incorrect. Because\nB is incorrect. Because")
  assert json.loads(messages[2][1])["explanations"][2] == {
      "option": "C", "verdict": "correct", "explanation": "Because blotters absorb ink."}
  assert "JSON" in messages[0][1] and messages[3][1].startswith(FOX.question)
  system_layout = prompts.tinythinker_messages(FOX, "C", "Instruction.", [exemplar], 1,
                                               np.random.default_rng(0), "system", False)
  assert [r for r, _ in system_layout] == ["system", "user"]
  assert "###\nWhat absorbs ink?\nOptions:" in system_layout[0][1]


def reply(verdicts, answer=None, key="Foxes hunt prey in the wild."):
  """A JSON reply with one item per option of FOX; `verdicts` maps a label to
  'correct'/'incorrect' (None: no verdict field)."""
  items = []
  for label in FOX.labels:
    item = {"option": label}
    if verdicts is not None:
      item["verdict"] = verdicts[label]
    item["explanation"] = f"Because reason {label} holds."
    items.append(item)
  data = {"key_information": key, "explanations": items}
  if answer is not None:
    data["answer"] = answer
  return data


def one_marked(label):
  return {l: "correct" if l == label else "incorrect" for l in FOX.labels}


def test_one_of_schema_admits_exactly_one_correct_option_any_of_them():
  jsonschema = pytest.importorskip("jsonschema")
  validator = jsonschema.Draft202012Validator(replies.rationale_schema(FOX, "one_of"))
  for label in FOX.labels:  # The teacher still chooses which.
    assert validator.is_valid(reply(one_marked(label))), label
  two = dict(one_marked("C"), A="correct")
  assert not validator.is_valid(reply(two))
  assert not validator.is_valid(reply({l: "incorrect" for l in FOX.labels}))
  # Order, completeness and the string bounds are kept from the free form.
  shuffled = reply(one_marked("C"))
  shuffled["explanations"].reverse()
  assert not validator.is_valid(shuffled)
  short = reply(one_marked("C"))
  short["explanations"].pop()
  assert not validator.is_valid(short)
  assert not validator.is_valid(reply(one_marked("C"), key="short"))
  free = jsonschema.Draft202012Validator(replies.rationale_schema(FOX, "none"))
  assert free.is_valid(reply(two))  # What a small teacher used to write.


def test_final_answer_schema_renders_the_papers_verdicts_from_the_answer():
  jsonschema = pytest.importorskip("jsonschema")
  validator = jsonschema.Draft202012Validator(replies.rationale_schema(FOX, "final_answer"))
  data = reply(None, answer="D")
  assert validator.is_valid(data)
  assert not validator.is_valid(reply(None, answer="F"))
  assert not validator.is_valid(reply(one_marked("D"), answer="D"))  # No verdicts here.
  parsed = replies.parse_reply(json.dumps(data), FOX, True)
  assert parsed.ok, parsed.error
  key_info, verdicts = parsed.value
  assert [l for l, v in verdicts.items() if v.correct] == ["D"]
  assert replies.render_text(key_info, verdicts) == (
      "Key Information: Foxes hunt prey in the wild.\nExplanations: "
      "A is incorrect. Because reason A holds.\nB is incorrect. Because reason B holds.\n"
      "C is incorrect. Because reason C holds.\nD is correct. Because reason D holds.\n"
      "E is incorrect. Because reason E holds.")
  bad = replies.parse_reply(json.dumps(reply(None, answer="Z")), FOX, True)
  assert not bad.ok and "answer 'Z' is not an option" in bad.error
  with pytest.raises(Exception, match="one_correct='both'"):
    replies.rationale_schema(FOX, "both")


def test_exemplar_replies_follow_the_one_correct_form():
  import numpy as np
  exemplar = INK
  messages = prompts.tinythinker_messages(FOX, "C", "Instruction.", [exemplar], 1,
                                          np.random.default_rng(0), "turns", True,
                                          "final_answer")
  shot = json.loads(messages[2][1])
  assert shot["answer"] == "C" and all("verdict" not in i for i in shot["explanations"])
  first_correct = dict(INK, Explanations=["A is correct. Because pockets absorb.",
                                          "B is incorrect. Because hands smudge.",
                                          "C is incorrect. Because blotters tear."])
  shot = json.loads(prompts.exemplar_reply(first_correct, True, "final_answer"))
  assert shot["answer"] == "A" and all("verdict" not in i for i in shot["explanations"])
  assert '"answer"' in messages[0][1]
  shot_example = prompts._exemplar_example(exemplar)
  jsonschema = pytest.importorskip("jsonschema")
  for form in ("one_of", "final_answer"):
    text = prompts.exemplar_reply(exemplar, True, form)
    # Each exemplar's reply is itself valid under its form's schema.
    assert jsonschema.Draft202012Validator(
        replies.rationale_schema(shot_example, form)).is_valid(json.loads(text)), form
