#!/bin/bash
# Set up hs-tx (apt packages, .venv) and run the demo on a throwaway sandbox.
# It never touches the host's real paths: everything lives in a temp dir (a loop-mounted
# btrfs image when run as root with btrfs available) that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
