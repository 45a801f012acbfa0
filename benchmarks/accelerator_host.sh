#!/usr/bin/env bash
# On an accelerator host with no network (Python >= 3.12 with JAX and its CUDA
# plugin or libtpu already installed, no TensorFlow), from a tree that carries the
# wheelhouse `make wheelhouse` built elsewhere:
#   1. installs the wheelhouse's packages this Python does not have yet
#      (--no-deps --no-index: nothing is downloaded, and nothing installed is
#      replaced, JAX least of all);
#   2. runs the accelerator benchmark (train step and sampling, bf16, MFU) from
#      this tree, its table in $OUT.
#
#   benchmarks/accelerator_host.sh [--sizes=base,large] [--skip_torch]
# Environment: WHEELHOUSE (default wheelhouse), OUT (default bench_out), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
OUT=${OUT:-bench_out}
if [ ! -d "$WHEELHOUSE" ]; then
  echo "no $WHEELHOUSE/: run 'make wheelhouse' on a machine with network and carry it" >&2
  exit 2
fi
missing=$("$PYTHON" - "$WHEELHOUSE" <<'PY'
import importlib.metadata as md, os, re, sys
folder = sys.argv[1]
for name in sorted(os.listdir(folder)):
  if not name.endswith(".whl") or name.startswith("tinythinker_jax-"):
    continue
  dist = re.sub(r"[-_.]+", "-", name.split("-")[0]).lower()
  try:
    md.version(dist)
  except md.PackageNotFoundError:
    print(os.path.join(folder, name))
PY
)
if [ -n "$missing" ]; then
  echo "installing from $WHEELHOUSE: $(echo $missing | wc -w) wheels"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet --no-deps --no-index $missing
fi
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
"$PYTHON" benchmarks/accelerator_bench.py --sizes=base,large --out="$OUT" "$@"
