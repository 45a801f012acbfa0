"""tinythinker_jax: distil a large language model's reasoning into small students
(T5, the Llama family, GPT-2)."""

__version__ = "0.1.0"
