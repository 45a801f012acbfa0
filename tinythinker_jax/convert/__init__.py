"""Checkpoint converters: Hugging Face T5 folders to and from our parameters."""

from tinythinker_jax.convert.hf import (CheckpointMismatchError, config_from_hf,
                                        config_to_hf, load_hf_t5, save_hf_t5)

__all__ = ["CheckpointMismatchError", "config_from_hf", "config_to_hf", "load_hf_t5",
           "save_hf_t5"]
