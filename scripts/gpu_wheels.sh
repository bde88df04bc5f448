#!/usr/bin/env bash
# Download the Python 3.12 wheels that benchmarks/gpu_check.py needs on a GPU machine without a package
# registry, into .gpu-wheels/ (git-ignored; it travels with the working tree, 64 MiB at most). Versions are
# those of the project's environment (.venv, or $PYTHON), so the GPU run uses what CI tested.
#
# Not downloaded, because the GPU machine brings them: torch (its own CUDA build, 2.11 on the lent H200 box;
# the project pins 2.13.0, whose CUDA wheel is ~900 MB and cannot travel), numpy, torchmetrics,
# lightning-utilities, packaging. Set GPU_WHEELS_NUMPY=1 to add numpy if a machine lacks it.
# Not downloaded, because they do not fit: ray (its wheel alone is close to the limit; the check's Ray stage
# then records "skipped: ray not installed"), flwr, pyarrow and matplotlib (the check avoids loop.py, which
# needs them, by building the cell as loop.py does).
#
# Usage: scripts/gpu_wheels.sh [DIR]    then on the GPU machine: benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.gpu-wheels}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
LIMIT_MIB=64

# engine: pydantic (config), yaml, monai (models, losses, metrics), torchjd (+ its quadprog projector: UPGrad
# in the strategy tests); tests: pytest, hypothesis
PKGS="monai torchjd pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml
      qpsolvers quadprog scipy pytest pluggy iniconfig pygments hypothesis sortedcontainers"
[ "${GPU_WHEELS_NUMPY:-0}" = 1 ] && PKGS="$PKGS numpy"

specs=()
for p in $PKGS; do
  v="$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$p")"
  specs+=("$p${v:+==$v}")
done

mkdir -p "$DEST"
"$PY" -m pip download --quiet --python-version 3.12 --only-binary=:all: --no-deps -d "$DEST" "${specs[@]}"

total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "wheels in $DEST:"
ls -1 "$DEST"/*.whl | sed 's|.*/|  |'
awk -v b="$total" -v lim="$LIMIT_MIB" 'BEGIN { printf "total %.1f MiB (limit %d MiB)\n", b / 1048576, lim }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels: error: $DEST holds more than $LIMIT_MIB MiB; it cannot travel to the GPU machine." >&2
  exit 1
fi
