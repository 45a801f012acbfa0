"""A teacher's token log-probs as offline top-k distillation targets.

An OpenAI-compatible teacher asked for log-probs (`TeacherConfig.top_logprobs`:
llama.cpp's server, vLLM and OpenAI return them) stores, with each completion in
the completion cache, every generated token's log-prob and the log-probs of the
`k` most likely tokens at that position. `chains_from_caches` reads those
chains back; `attach` finds them in a materialised array folder's targets
(`data.arrays`) and writes beside its features, for every target position a
chain covers:

- `teacher_topk_ids` `[N, L, K]` int32: the teacher's top tokens there (the
  sampled token always among them), as ids of the student's vocabulary;
- `teacher_topk_logprobs` `[N, L, K]` float32: their log-probs; slots beyond a
  position's tokens hold -inf (no mass);
- `teacher_topk_weights` `[N, L]` float32: 1 where the position has the
  teacher's distribution, else 0.

`training.distillation.topk_token_divergence` is the loss over them (the k
tokens and a rest bucket holding the remaining mass). The log-probs servers
return are their model's distribution before the sampling settings (llama.cpp:
the log-softmax of the logits; checked in tests/teacher_logprobs_test.py), so
they carry no temperature.

The tokenizer is checked, not assumed: a teacher's token is its text, mapped to
the student id whose text (decoded after a fixed token, so a leading space
counts) is the same; a chain agrees when every token maps and the student's own
tokenizer splits the chain's text into exactly those ids. `attach` stops with an
error when fewer than `min_agreement` of the chains agree (a different
tokenizer), and counts what it dropped: a top alternative whose text no student
id has alone is left out of the k (its mass stays in the rest bucket for both
sides). A chain is found in a row where at least `ngram` consecutive target ids
equal the chain's, and the match is extended both ways; a position's teacher
distribution was computed in the teacher's own context (its prompt and the
chain before it), which is what offline distillation from text another prompt
produced means.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from tinythinker_jax import errors, paths
from tinythinker_jax.data import arrays
from tinythinker_jax.teacher.cache import CompletionCache

log = logging.getLogger(__name__)

FEATURES = arrays.TEACHER_TOPK_FEATURES
IDS, LOGPROBS, WEIGHTS = FEATURES


def token_logprobs(choice: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
  """A response choice's per-token log-probs in one form for both endpoints:
  `[{"token": text, "logprob": float, "top": [[text, logprob], ...]}]` (the chat
  endpoint's `logprobs.content`, the completions endpoint's parallel lists), or
  None when the response has none. A token's text is its UTF-8 `bytes` where
  the server gives them (OpenAI), else its `token` string (llama.cpp)."""
  logprobs = choice.get("logprobs")
  if not logprobs:
    return None

  def text(entry: dict[str, Any]) -> str:
    raw = entry.get("bytes")
    if raw:
      return bytes(raw).decode("utf-8", errors="replace")
    return entry["token"]

  if "content" in logprobs:
    if logprobs["content"] is None:
      return None
    return [{"token": text(e), "logprob": float(e["logprob"]),
             "top": [[text(t), float(t["logprob"])] for t in e.get("top_logprobs") or ()]}
            for e in logprobs["content"]]
  tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
  return [{"token": token, "logprob": float(lp) if lp is not None else None,
           "top": [[t, float(v)] for t, v in (top or {}).items()]}
          for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops)]


@dataclasses.dataclass(frozen=True)
class Chain:
  """One completion's tokens: text, log-prob and top alternatives `[(text, logprob)]`."""

  tokens: tuple[str, ...]
  top: tuple[tuple[tuple[str, float], ...], ...]
  logprobs: tuple[float, ...]
  source: str = ""

  @property
  def text(self) -> str:
    return "".join(self.tokens)


def chains_from_caches(cache_paths: Iterable[paths.PathLike]) -> list[Chain]:
  """Every cached completion that carries per-token log-probs."""
  chains = []
  for path in cache_paths:
    if not paths.as_path(path).exists():
      raise errors.MissingFileError(f"{path}: no completion cache there")
    with CompletionCache(path) as cache:
      for record in cache.records():
        entries = (record.get("response") or {}).get("logprobs")
        if not entries:
          continue
        chains.append(Chain(
            tokens=tuple(e["token"] for e in entries),
            top=tuple(tuple((t, float(v)) for t, v in e.get("top") or ()) for e in entries),
            logprobs=tuple(float("nan") if e.get("logprob") is None else float(e["logprob"])
                           for e in entries),
            source=f"{path}#{record['key'][:12]}"))
  return chains


class StudentTokens:
  """The student vocabulary's token texts, and the ids a text names alone."""

  def __init__(self, codec: Any, vocab_rows: Optional[int] = None):
    self.codec = codec
    rows = int(vocab_rows or codec.vocab_size)
    anchor = codec.encode("a")
    if len(anchor) != 1:
      raise errors.UserError("the student's vocabulary does not encode 'a' as one token")
    head = codec.decode(anchor)
    by_text: dict[str, list[int]] = {}
    for i in range(2, rows):  # 0 and 1 are padding and EOS.
      full = codec.decode(anchor + [i])
      if not full.startswith(head) or len(full) == len(head):
        continue  # Special, control or partial-byte tokens decode to nothing alone.
      by_text.setdefault(full[len(head):], []).append(i)
    self.ids = {text: ids[0] for text, ids in by_text.items() if len(ids) == 1}
    self.ambiguous = sum(len(v) > 1 for v in by_text.values())

  def chain_ids(self, chain: Chain) -> Optional[list[int]]:
    """The chain's ids, when every token maps and the student's tokenizer splits
    its text the same way; else None."""
    ids = [self.ids.get(t) for t in chain.tokens]
    if not ids or any(i is None for i in ids):
      return None
    return ids if list(self.codec.encode(chain.text)) == ids else None


@dataclasses.dataclass
class AttachStats:
  chains: int = 0
  agreeing: int = 0
  rows: int = 0
  rows_covered: int = 0
  target_tokens: int = 0
  covered_tokens: int = 0
  dropped_alternatives: int = 0
  k: int = 0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _distribution(chain: Chain, position: int, student: StudentTokens,
                  chosen: int) -> tuple[list[int], list[float], int]:
  """The position's top ids and log-probs (the sampled token first), and how many
  alternatives had no student id."""
  ids, lps, dropped = [chosen], [chain.logprobs[position]], 0
  for text, lp in chain.top[position]:
    i = student.ids.get(text)
    if i is None:
      dropped += 1
    elif i not in ids:
      ids.append(i)
      lps.append(lp)
  if not np.isfinite(lps[0]):  # A server that gave no log-prob for the sampled token.
    ids, lps = ids[1:], lps[1:]
  return ids, lps, dropped


def attach(folder: paths.PathLike, chains: Sequence[Chain], student: StudentTokens, *,
           ngram: int = 8, max_candidates: int = 64, min_agreement: float = 0.9,
           fingerprint: str = "") -> AttachStats:
  """Writes the teacher's top-k features into a materialised folder (see the
  module docstring); returns what was matched. Idempotent: a folder whose meta
  records the same `fingerprint` is left as it is."""
  folder = paths.as_path(folder)
  dataset = arrays.ArrayDataset(folder)
  if fingerprint and dataset.meta.get("teacher_topk", {}).get("fingerprint") == fingerprint:
    return AttachStats(**dataset.meta["teacher_topk"]["stats"])
  stats = AttachStats(chains=len(chains))
  if not chains:
    raise errors.UserError(f"{folder}: no cached completion carries log-probs; teach with "
                           "TeacherConfig.top_logprobs > 0")
  mapped: list[tuple[Chain, list[int]]] = []
  first_bad = None
  for chain in chains:
    ids = student.chain_ids(chain)
    if ids is None:
      first_bad = first_bad or chain
    else:
      mapped.append((chain, ids))
  stats.agreeing = len(mapped)
  if stats.agreeing < min_agreement * len(chains):
    example = first_bad.tokens[:12] if first_bad else ()
    raise errors.UserError(
        f"{folder}: only {stats.agreeing} of {len(chains)} teacher chains split into the "
        f"student's tokens (< {min_agreement:.0%}; e.g. {first_bad.source if first_bad else ''} "
        f"tokens {list(example)}): the teacher's tokenizer is not the student's. Top-k "
        "distillation needs one tokenizer; train on the teacher's text instead "
        "(Fine-tune-CoT, sequence-level distillation)")
  index: dict[tuple[int, ...], list[tuple[int, int]]] = {}
  for c, (_, ids) in enumerate(mapped):
    for j in range(len(ids) - ngram + 1):
      index.setdefault(tuple(ids[j:j + ngram]), []).append((c, j))

  targets = np.asarray(dataset.arrays["decoder_target_tokens"])
  loss_weights = np.asarray(dataset.arrays.get("decoder_loss_weights", targets > 0))
  num_rows, length = targets.shape
  matches: list[list[tuple[int, int, int, int]]] = []  # (start, chain, offset, length)
  for r in range(num_rows):
    row = targets[r].tolist()
    found, p, floor = [], 0, 0
    while p + ngram <= length:
      candidates = index.get(tuple(row[p:p + ngram]))
      if not candidates or len(candidates) > max_candidates:
        p += 1
        continue
      best = None
      for c, j in candidates:
        ids = mapped[c][1]
        back = 0
        while p - back - 1 >= floor and j - back - 1 >= 0 and \
            row[p - back - 1] == ids[j - back - 1]:
          back += 1
        ahead = ngram
        while p + ahead < length and j + ahead < len(ids) and row[p + ahead] == ids[j + ahead]:
          ahead += 1
        if best is None or back + ahead > best[3]:
          best = (p - back, c, j - back, back + ahead)
      found.append(best)
      p = floor = best[0] + best[3]
    matches.append(found)

  distributions = {}
  k = 1
  for found in matches:
    for start, c, offset, n in found:
      chain, ids = mapped[c]
      for i in range(n):
        key = (c, offset + i)
        if key not in distributions:
          top_ids, lps, dropped = _distribution(chain, offset + i, student, ids[offset + i])
          stats.dropped_alternatives += dropped
          distributions[key] = (top_ids, lps)
          k = max(k, len(top_ids))
  topk_ids = np.zeros((num_rows, length, k), np.int32)
  topk_lps = np.full((num_rows, length, k), -np.inf, np.float32)
  weights = np.zeros((num_rows, length), np.float32)
  for r, found in enumerate(matches):
    for start, c, offset, n in found:
      for i in range(n):
        top_ids, lps = distributions[(c, offset + i)]
        if not top_ids or not loss_weights[r, start + i]:
          continue
        topk_ids[r, start + i, :len(top_ids)] = top_ids
        topk_lps[r, start + i, :len(lps)] = lps
        weights[r, start + i] = 1.0
  stats.rows = num_rows
  stats.rows_covered = int(np.count_nonzero(weights.any(axis=1)))
  stats.target_tokens = int(np.count_nonzero(loss_weights))
  stats.covered_tokens = int(weights.sum())
  stats.k = k
  if not stats.covered_tokens:
    raise errors.UserError(
        f"{folder}: none of the {len(mapped)} teacher chains appears in the targets "
        f"({ngram} tokens in a row at least): the cache is not the one these records "
        "were taught from, or the format rewrites the teacher's text")
  features = {name: np.array(dataset.arrays[name]) for name in dataset.arrays
              if name not in FEATURES}
  features.update({IDS: topk_ids, LOGPROBS: topk_lps, WEIGHTS: weights})
  meta = {k_: v for k_, v in dataset.meta.items() if k_ not in ("num_examples", "shapes")}
  meta["teacher_topk"] = {"fingerprint": fingerprint, "stats": stats.to_json()}
  del dataset
  arrays.write_features(folder, features, meta)
  log.info("%s: teacher top-%d on %d of %d target tokens (%d of %d rows)", folder, k,
           stats.covered_tokens, stats.target_tokens, stats.rows_covered, stats.rows)
  return stats
