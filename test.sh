#!/usr/bin/env bash
# Set everything up, then run the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
# MNIST and KMNIST ship in no registry package; on this project's machines they
# sit in ../shared/data beside the checkout. Elsewhere set FEDGEN_DATA_DIR. Set before
# the set-up, so that what it downloads (the orange3 wheel) lands where the tests look.
if [ -z "${FEDGEN_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export FEDGEN_DATA_DIR="$(cd ../shared/data && pwd)"
fi
bash scripts/setup.sh
if [ -n "${FEDGEN_DATA_DIR:-}" ]; then
  export FEDGEN_TEST_DATA_DIR="${FEDGEN_TEST_DATA_DIR:-$FEDGEN_DATA_DIR}"
fi
# A private cache so tests never reuse a classifier trained by an earlier run; removed on
# exit (it holds about 500 MB of models and data by the end).
if [ -z "${FEDGEN_CACHE_DIR:-}" ]; then
  FEDGEN_CACHE_DIR="$(mktemp -d)"
  export FEDGEN_CACHE_DIR
  trap 'rm -rf "$FEDGEN_CACHE_DIR"' EXIT
fi
# Style and types are part of the suite: CI runs this script as it is.
.venv/bin/ruff format --check --quiet src tests benchmarks
.venv/bin/ruff check --quiet src tests benchmarks
# mypy (over a minute from a cold cache) checks beside the tests, on the CPU their
# processes leave idle; its verdict counts as if it had run first.
mypy_log="$(mktemp)"
.venv/bin/mypy src/fedgen >"$mypy_log" 2>&1 &
mypy_pid=$!
# Two workers (this project's machines have two cores), a test file per worker at a time:
# a file's tests share module fixtures and must not race each other's processes.
# Files are handed out in collection order (--no-loadscope-reorder; xdist would order
# them by test count), which tests/conftest.py starts with the files that take minutes.
# The slowest tests are listed at the end, to keep the suite's time in view.
status=0
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 "$@" \
  || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
cat "$mypy_log"
rm -f "$mypy_log"
if [ "$mypy_status" -ne 0 ]; then
  echo "test.sh: mypy found type errors (above)" >&2
  [ "$status" -ne 0 ] || status=$mypy_status
fi
exit "$status"
