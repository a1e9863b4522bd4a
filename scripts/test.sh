#!/bin/bash
# Set up hs-tx (apt packages, .venv) and run the whole test suite: lint, types, unit,
# integration (real loop-mounted btrfs and ext4, real git) and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
rc=$?
set -e
# pytest's 5 means no test ran, which must not pass as green
[ "$rc" -eq 5 ] && echo "no tests ran" >&2
exit "$rc"
