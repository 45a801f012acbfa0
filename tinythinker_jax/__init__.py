"""tinythinker_jax: distil a large language model's reasoning into small T5 students."""

__version__ = "0.1.0"
