#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit + integration against real chains).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HARDHAT_DISABLE_TELEMETRY_PROMPT=true
.venv/bin/python -m pytest -q "$@"
