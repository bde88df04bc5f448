#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh
# the tree must stay ruff-clean (pyproject.toml [tool.ruff]); lint first, it takes a second
.venv/bin/ruff check gradprom tests benchmarks
exec .venv/bin/python -m pytest "$@"
