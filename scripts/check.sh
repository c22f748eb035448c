#!/usr/bin/env bash
# The test command: lint, type check, then the test suite (long benchmarks are marked `slow` and left out).
# Run from anywhere after scripts/bootstrap.sh; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
.venv/bin/ruff check src tests scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest's 5 means "no tests collected": that is a failure here, not a pass
exit $status
