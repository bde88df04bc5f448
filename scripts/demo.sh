#!/usr/bin/env bash
# Set up (if needed) and run `gradprom demo` on the embedded phantoms: no cluster, no download.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gradprom demo "$@"
