#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU machine from a checkout, without a package registry or an install:
# unpack the wheels that scripts/gpu_wheels.sh downloaded (.gpu-wheels/) into a site folder, put it and the
# checkout on PYTHONPATH, and run with the machine's own python3 and CUDA torch. Arguments go to gpu_check.py
# (e.g. --out DIR, --stages env,tests). Where the project is installed (scripts/setup.sh), the wheels are not
# needed: PYTHON=.venv/bin/python benchmarks/gpu_check.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${GPU_WHEELS:-$ROOT/.gpu-wheels}"
SITE="${GPU_SITE:-${TMPDIR:-/tmp}/gradprom-gpu-site}"
PY="${PYTHON:-python3}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  mkdir -p "$SITE"
  for w in "$WHEELS"/*.whl; do
    "$PY" -m zipfile -e "$w" "$SITE"  # a wheel is a zip of its import tree: unpacked, it imports
  done
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
cd "$ROOT"
exec "$PY" benchmarks/gpu_check.py "$@"
