"""Student models as Flax modules: T5 (v1.0, v1.1, Flan-T5; `t5`), the Llama family
(Llama, SmolLM, Qwen2; `llama`) and GPT-2 (`gpt2`); the interface every family
implements is `base.BaseModel` (families in `tinythinker_jax.families`)."""

from tinythinker_jax.models.t5 import T5, T5Config

__all__ = ["T5", "T5Config"]
