"""Teacher prompts of both methods (METHODS.md), as pure functions."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from tinythinker_jax.data.schema import Example
from tinythinker_jax.reasoning import formats

FINETUNE_COT_TEMPLATE_VERSION = "finetune-cot/zero-shot-cot/v1"
TINYTHINKER_TEMPLATE_VERSION = "tinythinker/key-information-explanations/v1"

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
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if "Key" not in data:
    raise ValueError(f"{path}: expected a JSON object with the instruction under 'Key'")
  return data["Key"]


def load_exemplars(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    exemplars = json.load(f)
  for i, e in enumerate(exemplars):
    missing = {"Q", "Options", "Key Information", "Explanations"} - set(e)
    if missing:
      raise ValueError(f"{path}[{i}]: exemplar lacks {sorted(missing)}")
  return exemplars


def tinythinker_messages(example: Example, hint_label: str, instruction: str,
                         exemplars: Sequence[dict[str, Any]], num_shots: int,
                         rng: np.random.Generator) -> tuple[tuple[str, str], ...]:
  """System message (instruction + k random exemplars) and the user query."""
  chosen = rng.choice(len(exemplars), size=min(num_shots, len(exemplars)), replace=False)
  shots = "\n".join(render_exemplar(exemplars[i]) for i in sorted(chosen))
  system = f"{instruction.rstrip()}\n\n{shots}\n###" if shots else instruction
  return (("system", system), ("user", tinythinker_query(example, hint_label)))


def default_exemplar_file(prompts_dir: str, dataset: str) -> Optional[str]:
  name = {"csqa": "csqa_cot.json", "obqa": "obqa_cot.json",
          "strategyqa": "strategyqa_cot.json"}.get(dataset)
  if name and os.path.exists(os.path.join(prompts_dir, name)):
    return os.path.join(prompts_dir, name)
  return None
