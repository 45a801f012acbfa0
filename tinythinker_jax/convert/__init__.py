"""Checkpoint converters: Hugging Face folders to and from our parameters (T5: `hf`;
Llama/Qwen2: `hf_llama`; GPT-2: `hf_gpt2`), llama.cpp's GGUF into them
(`gguf_llama`), and t5x checkpoints (msgpack + TensorStore, or orbax; `t5x`)."""

from tinythinker_jax.convert.hf import (CheckpointMismatchError, config_from_hf,
                                        config_to_hf, load_hf_t5, save_hf_t5)
from tinythinker_jax.convert.t5x import load_t5x_checkpoint

__all__ = ["CheckpointMismatchError", "config_from_hf", "config_to_hf", "load_hf_t5",
           "load_t5x_checkpoint", "save_hf_t5"]
