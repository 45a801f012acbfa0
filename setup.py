"""Installs tinythinker_jax: distilling LLM reasoning into T5 students with JAX."""

import setuptools

# Versions that install cleanly together on Python 3.11 (see STACK.md in the
# project notes); `pip check` is clean with exactly these.
_CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "numpy==2.4.6",
    "sentencepiece==0.2.3",
    "safetensors",
    "tqdm",
    "httpx",
    "editdistance",
    "matplotlib==3.11.2",  # the pipeline report's plots
]
# seqio pulls in TensorFlow; only the task registry and vocabularies need it,
# so an accelerator host without TensorFlow can still train from arrays.
_SEQIO = [
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # tensorflow-datasets 4.9.10 needs it undeclared
    "tensorboard==2.21.0",
    "clu==0.0.12",
    "protobuf==7.36.2",
]
_TEACHER = [
    # The embedded local teacher: llama.cpp's OpenAI-compatible server. PyPI has
    # only the source; it compiles once per machine (~6 minutes), then pip's
    # wheel cache serves it.
    "llama-cpp-python[server]==0.3.36",
]
_TEST = [
    "pytest",
    "torch==2.13.0",
    "transformers==5.23.0",
] + _TEACHER

setuptools.setup(
    name="tinythinker_jax",
    version="0.1.0",
    description="Distil a large language model's reasoning into small T5 students, "
    "in JAX/Flax, t5x-style.",
    packages=setuptools.find_packages(
        include=["tinythinker_jax", "tinythinker_jax.*", "tasks", "tasks.*"]),
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require={
        "seqio": _SEQIO,
        "test": _SEQIO + _TEST,
        "teacher": _TEACHER,
    },
    entry_points={"console_scripts": ["tinythinker=tinythinker_jax.main:console_main"]},
)
