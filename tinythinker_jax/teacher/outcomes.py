"""What teaching one question produced (kept records, dropped samples and the
teacher's accuracy), shared by the Fine-tune-CoT, TinyThinker and rule-based
teachers; and the structured-output modes their requests may use."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
from typing import Any, Awaitable, Optional

from tinythinker_jax import errors
from tinythinker_jax.data.schema import Example, RationaleRecord


class Method(enum.Enum):
  FINETUNE_COT = "finetune_cot"
  TINYTHINKER = "tinythinker"
  # Fine-tune-CoT's requests with every chain kept under the gold answer
  # (Distilling Step-by-Step's `--label_type gt`); its records are Fine-tune-CoT's.
  STEP_BY_STEP = "step_by_step"
  # The dataset's questions with their gold answers (answer-only students): no teacher.
  ANSWERS = "answers"


STRUCTURED_MODES = ("none", "json_schema", "json_object", "guided_json")


def structured_mode(value: Optional[str]) -> str:
  mode = value or "none"
  if mode not in STRUCTURED_MODES:
    raise errors.UserError(f"structured_output={value!r}; expected one of {STRUCTURED_MODES}")
  return mode


@dataclasses.dataclass
class Outcome:
  """What teaching one example produced."""

  kept: list[RationaleRecord] = dataclasses.field(default_factory=list)
  dropped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  teacher_correct: int = 0
  teacher_total: int = 0  # Samples whose answer could be read.
  samples: int = 0  # Samples asked for (retries not counted).
  format_retries: int = 0  # Extra requests made for unparsable samples.
  recovered_by_retry: int = 0  # Samples parsed only on a retry.


def provenance(teacher: str, template: str, sampling: dict[str, Any]) -> dict[str, Any]:
  return {"teacher": teacher, "prompt_template": template, "sampling": sampling,
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}


def drop(outcome: Outcome, example: Example, index: int, reason: str, text: str,
          **extra: Any) -> None:
  """A dropped sample keeps the gold answer, so disagreements can be read."""
  outcome.dropped.append({"id": example.id, "sample_index": index, "reason": reason,
                          "gold": example.answer, "text": text, **extra})


async def gather_all(*awaitables: Awaitable[Any]) -> list[Any]:
  """`asyncio.gather` that lets every awaitable finish before raising the first
  error: in deferred mode each records its requests, so that one batch holds
  them all."""
  results = await asyncio.gather(*awaitables, return_exceptions=True)
  for result in results:
    if isinstance(result, BaseException):
      raise result
  return list(results)
