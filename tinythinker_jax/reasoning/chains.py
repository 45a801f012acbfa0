"""Inference chains over a generate function, and self-consistency.

Nothing here calls a model: every function is handed `generate(prompts,
sampling, seed) -> [[Generation, ...] per prompt]` (a `Student.generate`, or a
stub in tests) and batches each stage over all examples and runs at once:

- TinyThinker (and its ablations): recall -> analyze each option -> summarize.
  The recall is given a final '.' if it lacks one; each option's analysis is
  generated from `...Analyze: For option X,`; the analyses are joined as
  `For option A, ... For option B, ...` before `Summarize:`.
- Fine-tune-CoT and vanilla: one pass, the answer parsed from the output.

Test-time sampling (docs/methods.md): recall and analyze at T=0.7 with top-k off,
summarize greedy; N runs are majority-voted (self-consistency).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence

from tinythinker_jax import seeds
from tinythinker_jax.data.schema import AnswerType, Example
from tinythinker_jax.reasoning import answers, formats
from tinythinker_jax.reasoning.formats import Format, Stage


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How one stage is decoded: temperature 0 is greedy (then one sample)."""

  temperature: float = 0.0
  num_samples: int = 1
  top_k: int = 0
  top_p: float = 1.0
  max_length: int = 0  # 0: the generator's default

  def with_samples(self, n: int) -> "Sampling":
    return dataclasses.replace(self, num_samples=n)


GREEDY = Sampling()
TEST_TIME = Sampling(temperature=0.7)  # TinyThinker's recall/analyze sampling


@dataclasses.dataclass(frozen=True)
class Generation:
  text: str
  logprob: float  # sum of the model's token log-probabilities (EOS included)
  num_tokens: int
  finished: bool = True  # False when max_length cut it before EOS


GenerateFn = Callable[[Sequence[str], Sampling, int], list[list[Generation]]]


@dataclasses.dataclass
class ChainRun:
  """One reasoning chain for one example; `answer` is canonical for the format
  (an option label for the TinyThinker formats, the task's answer otherwise)."""

  output: str  # the final stage's text (the summary, or the whole FTC output)
  answer: Optional[str]
  error: Optional[str] = None  # why no answer could be parsed
  recall: Optional[str] = None
  analyses: Optional[dict[str, str]] = None
  logprobs: dict[str, float] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def gold_answer(example: Example, fmt: Format) -> Optional[str]:
  """The gold answer in the canonical space of `fmt`."""
  if fmt in formats.STAGES_OF:
    return example.gold_label
  return example.answer


def is_correct(answer: Optional[str], example: Example, fmt: Format,
               answer_type: AnswerType) -> bool:
  if fmt in formats.STAGES_OF:
    return answer is not None and answer == example.gold_label
  return answers.answers_match(answer, example.answer, answer_type)


def majority_vote(runs: Sequence[ChainRun]) -> Optional[str]:
  """The most frequent parsed answer; ties go to the answer reached first."""
  counts = collections.Counter(r.answer for r in runs if r.answer is not None)
  return counts.most_common(1)[0][0] if counts else None


def _flatten(generations: list[list[Generation]]) -> list[Generation]:
  return [g for per_prompt in generations for g in per_prompt]


SINGLE_PASS = (Format.VANILLA, Format.FINETUNE_COT, Format.FINETUNE_COT_DECODER,
               Format.STEP_BY_STEP)


def run_single_pass(examples: Sequence[Example], generate: GenerateFn, *, fmt: Format,
                    answer_type: AnswerType, sampling: Sampling = GREEDY,
                    num_runs: int = 1, seed: int = 0) -> list[list[ChainRun]]:
  """Vanilla, Fine-tune-CoT or Distilling Step-by-Step (its `predict:` task
  only): `num_runs` outputs per example, parsed."""
  if fmt not in SINGLE_PASS:
    raise ValueError(f"run_single_pass serves {[f.value for f in SINGLE_PASS]}, not "
                     f"{fmt.value}")
  if sampling.temperature == 0 and num_runs > 1:
    raise ValueError("several runs need a sampling temperature > 0")
  prompt_of = {Format.FINETUNE_COT_DECODER: formats.finetune_cot_decoder_prompt,
               Format.STEP_BY_STEP: formats.step_by_step_prompt}.get(
                   fmt, formats.finetune_cot_question)
  prompts = [prompt_of(ex) for ex in examples]
  outputs = generate(prompts, sampling.with_samples(num_runs), seed)
  results = []
  for example, generations in zip(examples, outputs):
    runs = []
    for g in generations:
      if fmt in (Format.FINETUNE_COT, Format.FINETUNE_COT_DECODER):
        text = (formats.strip_completion_end(g.text) if fmt is Format.FINETUNE_COT_DECODER
                else g.text)
        parsed = formats.parse_finetune_cot(text, answer_type, example.labels or "ABCDE")
        answer = parsed.value[1] if parsed.ok else None
        error = parsed.error
      else:
        # Fine-tune-CoT's evaluator reads a vanilla output with no prefix: the
        # first candidate (an option named by its text where no label is).
        answer = answers.extract_answer(g.text, answer_type, example.labels or "ABCDE",
                                        prefix=None, choices=example.choices)
        error = None if answer is not None else "no answer in the output"
      runs.append(ChainRun(g.text, answer, error, logprobs={"output": g.logprob}))
    results.append(runs)
  return results


def run_staged(examples: Sequence[Example], generate: GenerateFn, *,
               fmt: Format = Format.TINYTHINKER, recall: Sampling = GREEDY,
               analyze: Sampling = GREEDY, summarize: Sampling = GREEDY,
               num_runs: int = 1, seed: int = 0,
               recalls: Optional[Sequence[Sequence[str]]] = None,
               analyses: Optional[Sequence[Sequence[dict[str, str]]]] = None
               ) -> list[list[ChainRun]]:
  """TinyThinker's chain (or an ablation) for every example, `num_runs` times.

  Run r of example i samples its own recall and analyses. With `recalls`
  given (one list per example), the chains start from those recalls instead
  (one run per recall), as self-reflection does for its analyze pairs. With
  `analyses` given as well (one `{label: analysis}` per recall), only the
  summarize stage is generated (`reasoning.diagnosis` teacher-forces stages
  this way).
  """
  stages = formats.STAGES_OF.get(fmt)
  if stages is None:
    raise ValueError(f"run_staged serves the TinyThinker formats, not {fmt.value}")
  for example in examples:
    if not example.choices:
      raise ValueError(f"example {example.id}: TinyThinker chains need options")
  if recalls is None and num_runs > 1 and not (
      (Stage.RECALL in stages and recall.temperature > 0) or
      (Stage.ANALYZE in stages and analyze.temperature > 0)):
    raise ValueError("several runs need a sampling temperature > 0 for recall or "
                     "analyze")
  # chains[i] = list of (recall text or None, recall logprob) per run.
  if recalls is not None:
    chains = [[(None if r is None else formats.ensure_period(r), None) for r in rs]
              for rs in recalls]
  elif Stage.RECALL in stages:
    n = num_runs if recall.temperature > 0 else 1
    generated = generate([formats.recall_input(ex) for ex in examples],
                         recall.with_samples(n), seeds.derive(seed, "recall"))
    chains = [[(formats.ensure_period(g.text), g.logprob) for g in gens] * (num_runs // n)
              for gens in generated]
  else:
    chains = [[(None, None)] * num_runs for _ in examples]

  given_analyses = analyses
  if given_analyses is not None and (recalls is None or Stage.ANALYZE not in stages):
    raise ValueError("given analyses need given recalls and a format with an analyze "
                     "stage")
  analyses: list[list[Optional[dict[str, str]]]] = [[None] * len(c) for c in chains]
  analyze_logp: list[list[float]] = [[0.0] * len(c) for c in chains]
  if given_analyses is not None:
    for i, (example, runs) in enumerate(zip(examples, given_analyses)):
      if len(runs) != len(chains[i]):
        raise ValueError(f"example {example.id}: {len(runs)} given analyses for "
                         f"{len(chains[i])} recalls")
      for r, given in enumerate(runs):
        missing = set(example.labels) - set(given)
        if missing:
          raise ValueError(f"example {example.id}: no given analysis for option(s) "
                           f"{', '.join(sorted(missing))}")
        analyses[i][r] = {label: given[label].strip() for label in example.labels}
  elif Stage.ANALYZE in stages:
    keys, prompts = [], []
    for i, (example, runs) in enumerate(zip(examples, chains)):
      for r, (recall_text, _) in enumerate(runs):
        for label in example.labels:
          keys.append((i, r, label))
          prompts.append(formats.analyze_input(example, recall_text, label))
    outputs = generate(prompts, analyze.with_samples(1),
                       seeds.derive(seed, "analyze"))
    for (i, r, label), gens in zip(keys, outputs):
      if analyses[i][r] is None:
        analyses[i][r] = {}
      analyses[i][r][label] = gens[0].text.strip()
      analyze_logp[i][r] += gens[0].logprob

  keys, prompts = [], []
  for i, (example, runs) in enumerate(zip(examples, chains)):
    for r, (recall_text, _) in enumerate(runs):
      keys.append((i, r))
      prompts.append(formats.summarize_input(example, recall_text, analyses[i][r]))
  outputs = generate(prompts, summarize.with_samples(1),
                     seeds.derive(seed, "summarize"))
  results: list[list[ChainRun]] = [[] for _ in examples]
  for (i, r), gens in zip(keys, outputs):
    example, text = examples[i], gens[0].text
    parsed = formats.parse_summary(text, example.labels)
    recall_text, recall_logp = chains[i][r]
    logprobs = {"summarize": gens[0].logprob}
    if recall_logp is not None:
      logprobs["recall"] = recall_logp
    if analyses[i][r] is not None and given_analyses is None:
      logprobs["analyze"] = analyze_logp[i][r]
    results[i].append(ChainRun(text, parsed.value, parsed.error, recall_text,
                               analyses[i][r], logprobs))
  return results


def run_chains(examples: Sequence[Example], generate: GenerateFn, *, fmt: Format,
               answer_type: AnswerType, sampled: bool = False, num_runs: int = 1,
               temperature: float = 0.7, seed: int = 0) -> list[list[ChainRun]]:
  """Greedy chains (`sampled=False`), or `num_runs` test-time-sampled chains."""
  stage_sampling = Sampling(temperature=temperature) if sampled else GREEDY
  runs = num_runs if sampled else 1
  if fmt in formats.STAGES_OF:
    return run_staged(examples, generate, fmt=fmt, recall=stage_sampling,
                      analyze=stage_sampling, summarize=GREEDY, num_runs=runs, seed=seed)
  return run_single_pass(examples, generate, fmt=fmt, answer_type=answer_type,
                         sampling=stage_sampling, num_runs=runs, seed=seed)
