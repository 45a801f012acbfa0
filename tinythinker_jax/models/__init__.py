"""Student models: T5 (v1.0, v1.1, Flan-T5) as Flax modules."""

from tinythinker_jax.models.t5 import T5, T5Config

__all__ = ["T5", "T5Config"]
