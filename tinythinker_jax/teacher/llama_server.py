"""llama-cpp-python's OpenAI-compatible server, with prompt reuse that keeps
replies independent of request order.

  python -m tinythinker_jax.teacher.llama_server --fresh_prompts [--reuse_block N] \
      [llama_cpp.server flags]

llama-cpp-python keeps the previous request's tokens in its KV cache and
evaluates only a new prompt's suffix. That is faster, but a reply then depends
on which request the server answered before: the prompt's tokens are fed to
llama.cpp in batches that start wherever the previous prompt stopped matching,
and a prompt batched differently rounds differently, so a sampled reply can
change.

With `--fresh_prompts` a reply depends only on its request and seed, whichever
server process answers it and in whatever order (`LocalServer(fresh_prompts=True)`,
the default there). Every prompt is fed in batches of `--reuse_block` tokens
(the server's `n_batch`) counted from its first token, as a prompt evaluated
whole from an empty cache is. A request keeps from the previous one only whole
blocks that both prompts share and that the previous request computed as
whole prompt batches (never its sampled tokens, which were fed one at a time):
those keys and values are exactly the ones an empty-cache evaluation would
compute, so reusing them changes no number, and a few-shot prefix shared by
every request is evaluated once per server instead of once per request.
`--reuse_block 0` evaluates every prompt whole (no reuse at all).
"""

from __future__ import annotations

import runpy
import sys
from typing import Optional, Sequence

FLAG = "--fresh_prompts"
BLOCK_FLAG = "--reuse_block"
DEFAULT_BLOCK = 64  # Tokens; at most llama-cpp-python's n_ubatch (512). BENCHMARKS.md.


def reusable_prefix(previous: Sequence[int], prompt: Sequence[int], block: int) -> int:
  """How many of `prompt`'s first tokens can keep the keys and values that
  `previous` (the whole-block part of the last evaluated prompt) left: their
  common prefix, cut to whole blocks, and at least one token short of `prompt`
  so that its last batch is evaluated and yields fresh logits."""
  if block <= 0:
    return 0
  common = 0
  for a, b in zip(previous, prompt):
    if a != b:
      break
    common += 1
  return max(0, min(common, len(prompt) - 1) // block * block)


def order_independent_prompts(block: int) -> None:
  """Makes every `Llama.generate` evaluate its prompt as from an empty cache,
  batch for batch, reusing only whole shared blocks (see the module docstring)."""
  from llama_cpp import llama  # pylint: disable=import-outside-toplevel

  original = llama.Llama.generate

  def generate(self, tokens, *args, **kwargs):
    tokens = list(tokens)
    if block and self.n_batch != block:
      raise RuntimeError(f"{BLOCK_FLAG}={block} needs the server's --n_batch {block} "
                         f"(it runs with n_batch={self.n_batch})")
    previous: Optional[list] = getattr(self, "_tinythinker_blocks", None) or []
    keep = reusable_prefix(previous, tokens, block)
    # Until this prompt's blocks are in the cache, nothing there is reusable.
    self._tinythinker_blocks = []
    # llama-cpp-python reuses the longest prefix of its first `n_tokens` ids:
    # with n_tokens = keep that is exactly `keep` (0: a reset, an empty cache).
    self.n_tokens = keep
    if keep:
      sys.stderr.write(f"tinythinker: reused {keep} of {len(tokens)} prompt tokens\n")
    first = True
    for token in original(self, tokens, *args, **kwargs):
      if first:  # The prompt is evaluated: its whole blocks are in the cache.
        self._tinythinker_blocks = tokens[:(len(tokens) // block) * block] if block else []
        first = False
      sent = yield token
      if sent is not None:  # Never sent by llama-cpp-python's own callers.
        raise RuntimeError("order-independent prompts do not take tokens sent to generate")

  llama.Llama.generate = generate


def main(argv: Optional[list] = None) -> None:
  argv = sys.argv if argv is None else argv
  if FLAG in argv:
    argv.remove(FLAG)
    block = DEFAULT_BLOCK
    if BLOCK_FLAG in argv:
      i = argv.index(BLOCK_FLAG)
      block = int(argv[i + 1])
      del argv[i:i + 2]
    if block < 0:
      raise SystemExit(f"{BLOCK_FLAG}={block}; expected >= 0")
    if block:
      argv += ["--n_batch", str(block)]
    order_independent_prompts(block)
  runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
