#!/usr/bin/env bash
# Set everything up, then train the default experiment (extra arguments go to `fedgen run`).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/fedgen run "$@"
