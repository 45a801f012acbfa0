"""What a teaching run will ask for, before it asks: `tinythinker teach --dry_run`.

The pipeline runs once with the client in deferred mode (nothing is sent; the
completion cache answers what is already paid for), which gives the first
round's requests exactly. Later rounds depend on the replies and are estimated:
Fine-tune-CoT's answer step (one request per rationale, its prompt the
reasoning prompt plus the rationale) exactly in count (also where some
rationales are cached and only their answers are missing), TinyThinker's format
retries as an upper bound. Token counts are estimates: prompt text at about 4
characters a token (the teacher's own tokenizer is not at hand), completions at
their `max_tokens` (an upper bound). With prices in the TeacherConfig, the
cost follows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from tinythinker_jax.teacher.client import PendingRequest, TeacherConfig

CHARS_PER_TOKEN = 4.0
MESSAGE_OVERHEAD_TOKENS = 4  # Role and delimiters of one chat message.


def prompt_tokens(body: dict[str, Any]) -> int:
  """An estimate of a request's prompt tokens."""
  if "messages" in body:
    return sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS
               for m in body["messages"])
  return math.ceil(len(body.get("prompt", "")) / CHARS_PER_TOKEN)


@dataclasses.dataclass
class Round:
  what: str
  requests: int
  prompt_tokens: int
  completion_tokens: int  # max_tokens summed: an upper bound.
  exact_count: bool = True  # False: at most this many requests.


@dataclasses.dataclass
class Estimate:
  examples: int
  cached: int  # Samples already in the completion cache (free).
  rounds: list[Round]
  prompt_price_per_million: Optional[float] = None
  completion_price_per_million: Optional[float] = None

  def totals(self) -> tuple[int, int, int]:
    return (sum(r.requests for r in self.rounds), sum(r.prompt_tokens for r in self.rounds),
            sum(r.completion_tokens for r in self.rounds))

  def cost(self) -> Optional[float]:
    if self.prompt_price_per_million is None or self.completion_price_per_million is None:
      return None
    _, prompt, completion = self.totals()
    return (prompt * self.prompt_price_per_million
            + completion * self.completion_price_per_million) / 1e6

  def to_json(self) -> dict[str, Any]:
    requests, prompt, completion = self.totals()
    return {"examples": self.examples, "cached_samples": self.cached,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "requests": requests, "prompt_tokens": prompt,
            "completion_tokens_at_most": completion, "cost_usd": self.cost()}

  def render(self) -> str:
    lines = [f"{self.examples} questions; {self.cached} samples already cached (free)"]
    for r in self.rounds:
      count = f"{r.requests}" if r.exact_count else f"at most {r.requests}"
      lines.append(f"  {r.what}: {count} requests, ~{r.prompt_tokens:,} prompt tokens, "
                   f"<= {r.completion_tokens:,} completion tokens")
    requests, prompt, completion = self.totals()
    lines.append(f"  total (at most): {requests} requests, ~{prompt:,} prompt tokens, "
                 f"<= {completion:,} completion tokens")
    cost = self.cost()
    lines.append(f"  cost: at most ${cost:,.2f} (${self.prompt_price_per_million}/M prompt, "
                 f"${self.completion_price_per_million}/M completion tokens)"
                 if cost is not None else
                 "  cost: set TeacherConfig.prompt_price_per_million and "
                 "completion_price_per_million for an estimate")
    lines.append(f"  (tokens estimated at {CHARS_PER_TOKEN:g} characters a token; "
                 "completions at max_tokens)")
    return "\n".join(lines)


ANSWER_CUE = "Therefore, the answer is"  # Fine-tune-CoT's step-2 prompts end so.


def _is_answer_step(request: PendingRequest) -> bool:
  body = request.body
  text = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
  return text.rstrip().endswith(ANSWER_CUE)


def estimate(pending: dict[str, PendingRequest], config: TeacherConfig, examples: int,
             cached: int, method: str, answer_max_tokens: int = 0,
             format_retries: int = 0) -> Estimate:
  """The estimate from the first round's deferred requests."""
  first: Sequence[PendingRequest] = list(pending.values())
  if method != "finetune_cot":
    rounds = [Round("first round", len(first), sum(prompt_tokens(r.body) for r in first),
                    sum(int(r.body.get("max_tokens") or 0) for r in first))]
    if format_retries and first:
      rounds.append(Round("format retries", len(first) * format_retries,
                          rounds[0].prompt_tokens * format_retries,
                          rounds[0].completion_tokens * format_retries, exact_count=False))
  else:
    # Step-2 requests of cached rationales are already deferred; every deferred
    # step-1 request will add one more, its prompt step 1's plus the rationale
    # (at most max_tokens) and the cue.
    answers = [r for r in first if _is_answer_step(r)]
    reasoning = [r for r in first if not _is_answer_step(r)]
    rounds = [Round("reasoning (step 1)", len(reasoning),
                    sum(prompt_tokens(r.body) for r in reasoning),
                    sum(int(r.body.get("max_tokens") or 0) for r in reasoning))]
    if reasoning or answers:
      rounds.append(Round(
          "answer (step 2)", len(answers) + len(reasoning),
          sum(prompt_tokens(r.body) for r in answers) +
          sum(prompt_tokens(r.body) + int(r.body.get("max_tokens") or 0) + 6
              for r in reasoning),
          sum(int(r.body.get("max_tokens") or 0) for r in answers) +
          answer_max_tokens * len(reasoning)))
  return Estimate(examples, cached, rounds, config.prompt_price_per_million,
                  config.completion_price_per_million)
