"""llama-cpp-python's OpenAI-compatible server, with its prompt reuse optional.

  python -m tinythinker_jax.teacher.llama_server --fresh_prompts [llama_cpp.server flags]

llama-cpp-python keeps the previous request's tokens in its KV cache and
evaluates only a new prompt's suffix. That is faster, but a reply then depends
on which request the server answered before: a prompt evaluated whole and one
evaluated after a shared prefix round differently, and a sampled reply can
change. With `--fresh_prompts` every prompt is evaluated whole, so a reply
depends only on the request and its seed, whichever server process answers it
and in whatever order (`LocalServer(fresh_prompts=True)`, the default there).
"""

from __future__ import annotations

import runpy
import sys

FLAG = "--fresh_prompts"


def evaluate_prompts_whole() -> None:
  """Makes every `Llama.generate` start from an empty KV cache."""
  from llama_cpp import llama  # pylint: disable=import-outside-toplevel

  original = llama.Llama.generate

  def generate(self, tokens, *args, **kwargs):
    self.n_tokens = 0  # No prefix to reuse: the prompt is evaluated from its start.
    return original(self, tokens, *args, **kwargs)

  llama.Llama.generate = generate


def main() -> None:
  if FLAG in sys.argv:
    sys.argv.remove(FLAG)
    evaluate_prompts_whole()
  runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
