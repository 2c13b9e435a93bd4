#!/usr/bin/env bash
# The whole test suite from a fresh clone: set-up, lint, tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${OTBR_VENV:-$here/.venv}"
cd "$here"
"$venv/bin/ruff" check otbr cli tests benchmarks
if [ "$#" -eq 0 ]; then
    # the tests and every docstring example of the package and the CLI
    "$venv/bin/python" -m pytest -q --doctest-modules otbr cli tests
else
    "$venv/bin/python" -m pytest -q "$@"
fi
