#!/usr/bin/env bash
# Set everything up, lint (ruff) and type-check (mypy), then run the whole test suite (unit + integration against
# real chains). Stops at the first step that fails and says which; otherwise pytest's exit code is the result.
set -euo pipefail
cd "$(dirname "$0")/.."

step() {  # step NAME COMMAND...: run COMMAND; on failure name the step and exit with its status
  local name=$1
  shift
  "$@" || { local rc=$?; echo "scripts/test.sh: step '$name' failed (exit $rc)" >&2; exit "$rc"; }
}

step setup ./scripts/setup.sh
export HARDHAT_DISABLE_TELEMETRY_PROMPT=true
echo "== ruff check"
step "ruff check" .venv/bin/ruff check marketplace node scripts tests
echo "== mypy"
step mypy .venv/bin/mypy marketplace node
.venv/bin/python -m pytest -q "$@"
