#!/usr/bin/env bash
# The whole test suite from a fresh clone: set-up, lint, tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${OTBR_VENV:-$here/.venv}"
cd "$here"
"$venv/bin/ruff" check otbr cli tests benchmarks
"$venv/bin/python" -m pytest -q "$@"
