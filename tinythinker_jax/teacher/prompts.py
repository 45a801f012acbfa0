"""Teacher prompts of both methods (docs/methods.md), as pure functions."""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

import numpy as np

from tinythinker_jax import errors, paths
from tinythinker_jax.data.schema import Choice, Example
from tinythinker_jax.reasoning import formats

FINETUNE_COT_TEMPLATE_VERSION = "finetune-cot/zero-shot-cot/v1"
TINYTHINKER_TEMPLATE_VERSION = "tinythinker/key-information-explanations/v2"

# Used when no request.json is given: the same instruction as TinyThinker's.
DEFAULT_INSTRUCTION = (
    "Reference examples delimited with ### as a guide to outline the reasoning steps "
    "towards the correct answer in a step-by-step manner. First, concisely summarize the "
    "key information or core issue from the question statement. Then, systematically "
    "evaluate each option according to the following format:\n\nKey Information: "
    "[Summarize the key information from the question.]\nExplanations: [Option] is "
    "[correct/incorrect]. Because [Explain the option's features and relevance to the key "
    "concept.]\n")


def zero_shot_cot_reasoning(example: Example) -> str:
  """Step 1 of Fine-tune-CoT's teacher: `Q: {question}\\nA: Let's think step by step.`"""
  return f"Q: {formats.finetune_cot_question(example)}\nA: Let's think step by step."


def zero_shot_cot_answer(reasoning_prompt: str, rationale: str) -> str:
  """Step 2: the step-1 prompt, the rationale, and `Therefore, the answer is`."""
  return f"{reasoning_prompt}{rationale}\nTherefore, the answer is"


def tinythinker_options(example: Example) -> str:
  return ", ".join(f"{c.label}. {c.text}" for c in example.choices)


def render_exemplar(exemplar: dict[str, Any]) -> str:
  """`###\\n{Q}\\nOptions: ...\\nKey Information: ...\\nExplanations: ...`."""
  explanations = "\n".join(exemplar["Explanations"])
  return (f"###\n{exemplar['Q']}\nOptions: {exemplar['Options']}\n"
          f"Key Information: {exemplar['Key Information']}\nExplanations: {explanations}")


def tinythinker_query(example: Example, hint_label: str) -> str:
  """The user message: the question, options, and the gold answer as a hint."""
  order = [hint_label] + [l for l in example.labels if l != hint_label]
  lines = [f"{hint_label} is correct. Because"] + [f"{l} is incorrect. Because"
                                                  for l in order[1:]]
  return (f"{example.question}\nOptions: {tinythinker_options(example)}\n"
          f"Key Information:\nExplanations: " + "\n".join(lines))


def load_instruction(path: Optional[str]) -> str:
  if not path:
    return DEFAULT_INSTRUCTION
  data = paths.read_json(path)
  if "Key" not in data:
    raise errors.UserError(f"{path}: expected a JSON object with the instruction under 'Key'")
  return data["Key"]


def load_exemplars(path: str) -> list[dict[str, Any]]:
  exemplars = paths.read_json(path)
  for i, e in enumerate(exemplars):
    missing = {"Q", "Options", "Key Information", "Explanations"} - set(e)
    if missing:
      raise errors.UserError(f"{path}[{i}]: exemplar lacks {sorted(missing)}")
  return exemplars


JSON_INSTRUCTION = (
    "\nReply with one JSON object and nothing else: {\"key_information\": the key "
    "information in one sentence, \"explanations\": one object per option, in the "
    "options' order, {\"option\": its letter, \"verdict\": \"correct\" or "
    "\"incorrect\", \"explanation\": one sentence starting with Because}}. Exactly "
    "one option is correct.\n")
# The 'final_answer' form (replies.ONE_CORRECT_FORMS): verdicts follow from `answer`.
JSON_ANSWER_INSTRUCTION = (
    "\nReply with one JSON object and nothing else: {\"key_information\": the key "
    "information in one sentence, \"explanations\": one object per option, in the "
    "options' order, {\"option\": its letter, \"explanation\": one sentence starting "
    "with Because}, \"answer\": the letter of the one correct option}.\n")

FEW_SHOT_LAYOUTS = ("turns", "system")


def exemplar_hint(exemplar: dict[str, Any]) -> str:
  """The label an exemplar's explanations mark correct (its user turn's hint)."""
  for line in exemplar["Explanations"]:
    match = re.match(r"\s*([A-Z])\s+is\s+correct\b", line)
    if match:
      return match.group(1)
  raise errors.UserError(f"exemplar {exemplar['Q'][:60]!r}: no option is marked correct")


def _exemplar_example(exemplar: dict[str, Any]) -> Example:
  options = re.findall(r"(?:^|,\s*)([A-Z])\.\s*(.*?)(?=,\s*[A-Z]\.\s|$)",
                       exemplar["Options"])
  return Example(id="exemplar", question=exemplar["Q"], answer=exemplar_hint(exemplar),
                 choices=tuple(Choice(l, t.strip()) for l, t in options))


def exemplar_reply(exemplar: dict[str, Any], structured: bool,
                   one_correct: str = "one_of") -> str:
  """The exemplar's answer as the teacher should write it: the paper's text,
  or the JSON object of structured output (in `one_correct`'s form)."""
  if not structured:
    explanations = "\n".join(exemplar["Explanations"])
    return f"Key Information: {exemplar['Key Information']}\nExplanations: {explanations}"
  items, answer = [], None
  for line in exemplar["Explanations"]:
    match = re.match(r"\s*([A-Z])\s+is\s+(correct|incorrect)\.\s*(.*)$", line, re.S)
    if match:
      item = {"option": match.group(1), "verdict": match.group(2),
              "explanation": match.group(3).strip()}
      if one_correct == "final_answer":
        verdict = item.pop("verdict")
        if verdict == "correct" and answer is None:
          answer = item["option"]
      items.append(item)
  reply = {"key_information": exemplar["Key Information"], "explanations": items}
  if one_correct == "final_answer":
    reply["answer"] = answer or exemplar_hint(exemplar)
  return json.dumps(reply, ensure_ascii=False)


def tinythinker_messages(example: Example, hint_label: str, instruction: str,
                         exemplars: Sequence[dict[str, Any]], num_shots: int,
                         rng: np.random.Generator, layout: str = "system",
                         structured: bool = False,
                         one_correct: str = "one_of") -> tuple[tuple[str, str], ...]:
  """The chat request: the instruction, k random exemplars and the user query.

  `layout='system'` puts the exemplars in the system message, delimited by ###
  (TinyThinker's own request); `'turns'` gives each as a user turn (its
  question with the hint) and an assistant turn (its rationale), which chat
  models follow more closely. `structured` asks for the JSON object of
  `replies.rationale_schema` (in `one_correct`'s form), and writes the
  exemplars' replies in it.
  """
  if layout not in FEW_SHOT_LAYOUTS:
    raise errors.UserError(f"TinyThinkerSettings.few_shot={layout!r}; expected one of "
                     f"{FEW_SHOT_LAYOUTS}")
  chosen = sorted(rng.choice(len(exemplars), size=min(num_shots, len(exemplars)),
                             replace=False)) if exemplars else []
  system = instruction.rstrip() + "\n"
  if structured:
    system += JSON_ANSWER_INSTRUCTION if one_correct == "final_answer" else JSON_INSTRUCTION
  query = tinythinker_query(example, hint_label)
  if layout == "system":
    shots = "\n".join(render_exemplar(exemplars[i]) for i in chosen)
    if shots:
      system = f"{system}\n{shots}\n###"
    return (("system", system), ("user", query))
  turns: list[tuple[str, str]] = [("system", system)]
  for i in chosen:
    shot = _exemplar_example(exemplars[i])
    turns += [("user", tinythinker_query(shot, shot.answer)),
              ("assistant", exemplar_reply(exemplars[i], structured, one_correct))]
  return tuple(turns) + (("user", query),)


def completion_prompt(messages: Sequence[tuple[str, str]]) -> str:
  """Chat turns flattened into one prompt for a completions endpoint, ending
  where the assistant's reply starts."""
  parts = []
  for role, content in messages:
    if role == "assistant":
      parts.append(f"{content}\n###")
    else:
      parts.append(content if role == "system" else f"###\n{content}")
  return "\n".join(parts) + "\n"


def default_exemplar_file(prompts_dir: str, dataset: str) -> Optional[str]:
  name = {"csqa": "csqa_cot.json", "obqa": "obqa_cot.json",
          "strategyqa": "strategyqa_cot.json"}.get(dataset)
  if name and (paths.as_path(prompts_dir) / name).exists():
    return str(paths.as_path(prompts_dir) / name)
  return None
