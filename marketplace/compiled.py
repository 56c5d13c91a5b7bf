"""Read the committed contract artifacts (`marketplace/artifacts/*.json`); needs neither node nor solc.

`marketplace/build.py` writes the artifacts; this module only loads and hashes them, so installed copies of
the package (where the artifacts ship as package data) work without the Solidity toolchain.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from marketplace.errors import ToolchainError

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
BUILD_INFO = "build-info.json"
ARTIFACT_KEYS = frozenset({"contractName", "sourceName", "abi", "bytecode", "deployedBytecode", "compiler"})


def dumps_canonical(obj: Any) -> str:
    """JSON text that is byte-identical for equal data: sorted keys, indent 2, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def artifact_files(directory: Path | None = None) -> list[Path]:
    """The `*.json` files of `directory` (default: the package's), build-info included, sorted by name."""
    directory = directory or ARTIFACTS_DIR
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.glob("*.json") if p.is_file()), key=lambda p: p.name)


def contract_names(directory: Path | None = None) -> list[str]:
    """Names of the contracts with an artifact in `directory` (default: the package's), sorted."""
    return [p.stem for p in artifact_files(directory) if p.name != BUILD_INFO]


def artifact_hash(directory: Path | None = None) -> str:
    """sha256 (hex) over the sorted artifact files: each file's name, a NUL, its bytes and a NUL.

    Deployment files record it, so a deployment can be matched with the bytecode that made it.
    Raises ToolchainError if there are no artifacts (run `agora contracts build`).
    """
    files = artifact_files(directory)
    if not files:
        where = directory or ARTIFACTS_DIR
        raise ToolchainError(f"no contract artifacts in {where}: run `agora contracts build`")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _load_cached(path: Path, mtime_ns: int) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ToolchainError(f"unreadable artifact {path}: {err}; run `agora contracts build`") from err
    missing = ARTIFACT_KEYS - data.keys() if isinstance(data, dict) else ARTIFACT_KEYS
    if missing:
        lacking = ", ".join(sorted(missing))
        raise ToolchainError(f"artifact {path} lacks {lacking}; run `agora contracts build`")
    return data


def load_artifact(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The artifact of contract `name` (keys: contractName, sourceName, abi, bytecode, deployedBytecode,
    compiler). Callers must not mutate the returned dict (it is cached).

    Raises ToolchainError if the artifact is missing or malformed.
    """
    path = (directory or ARTIFACTS_DIR) / f"{name}.json"
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        known = ", ".join(contract_names(directory)) or "none"
        raise ToolchainError(
            f"no artifact for contract {name!r} in {path.parent} (known: {known}); "
            "run `agora contracts build`"
        ) from None
    return _load_cached(path, mtime_ns)
