"""Offline, reproducible Solidity build: `contracts/**/*.sol` -> `marketplace/artifacts/<Contract>.json`.

Each artifact carries the ABI, bytecode, compiler settings, the contract's metadata (the exact JSON string whose
hash the bytecode ends with, as Sourcify verifies it) and its NatSpec (`devdoc`, `userdoc`). `build-info.json`
carries the complete solc standard-JSON input (every source, OpenZeppelin's included, with its content), so a
deployment can be verified on a block explorer (Etherscan's "standard JSON input", with the contract named
`contracts/JobMarket.sol:JobMarket`) without this repository.

The compiler is a native `solc` of the pinned version when one is on PATH, else the npm `solc` package
(WebAssembly) behind `scripts/solc-shim.js`; both give the same bytecode. Nothing is downloaded. Sources are
keyed relative to the repo root (`contracts/JobMarket.sol`) and OpenZeppelin keeps its import names
(`@openzeppelin/contracts/...`, read from node_modules), so the output is byte-identical in any checkout
and matches what Hardhat compiles from the same sources with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketplace.compiled import ARTIFACTS_DIR, BUILD_INFO, artifact_files, artifact_hash, dumps_canonical
from marketplace.errors import ToolchainError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO_ROOT / "contracts"
NODE_MODULES = REPO_ROOT / "node_modules"
SHIM = REPO_ROOT / "scripts" / "solc-shim.js"
SOLC_VERSION = "0.8.30"  # must match package.json's "solc" and hardhat.config.js
EVM_VERSION = "shanghai"  # OpenZeppelin 5.4 + shanghai runs on anvil, ganache, hardhat and py-evm
OPTIMIZER_RUNS = 1000
# The IR pipeline: smaller and cheaper code than the legacy one for these contracts (JobMarket must stay well
# under the EIP-170 limit of 24,576 bytes), at the cost of a slower compile.
VIA_IR = True
OUTPUTS = ["abi", "evm.bytecode.object", "evm.bytecode.linkReferences",
           "evm.deployedBytecode.object", "evm.deployedBytecode.linkReferences", "metadata", "devdoc", "userdoc"]
_NPM_FIX = "run `npm ci` in the repo root"
_VERSION_RE = re.compile(r"Version:\s*(\d+\.\d+\.\d+)(\+commit\.[0-9a-f]+)")


def compiler_settings() -> dict[str, Any]:
    """The standard-JSON `settings` of every build (outputSelection included)."""
    return {
        "evmVersion": EVM_VERSION,
        "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
        "metadata": {"appendCBOR": True},
        "viaIR": VIA_IR,
        "outputSelection": {"*": {"*": list(OUTPUTS)}},
    }


@dataclass(frozen=True)
class Compiler:
    """A solc executable: `version` is platform-free (`0.8.30+commit.73712a01`)."""

    binary: Path
    version: str
    native: bool


@dataclass
class BuildResult:
    """What `build` made: artifacts by contract name, compiler warnings, and where they are."""

    artifacts: dict[str, dict[str, Any]]
    warnings: list[str]
    out_dir: Path
    compiler: Compiler
    artifact_hash: str
    written: list[str] = field(default_factory=list)


def _version_of(binary: Path | str) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], check=False, capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    return "".join(match.groups()) if match else None


def find_compiler() -> Compiler:
    """A native `solc` of SOLC_VERSION on PATH, else node + the shim over node_modules/solc.

    Raises ToolchainError (with the fix) if node or the npm `solc` package is missing or of another version.
    """
    native = shutil.which("solc")
    if native and (version := _version_of(native)) and version.startswith(SOLC_VERSION + "+"):
        return Compiler(Path(native), version, native=True)
    if shutil.which("node") is None:
        raise ToolchainError(f"node is not installed (needed to compile): install it, then {_NPM_FIX}")
    if not (NODE_MODULES / "solc" / "soljson.js").is_file():
        raise ToolchainError(f"the npm package `solc` is missing from {NODE_MODULES}: {_NPM_FIX}")
    if not (NODE_MODULES / "@openzeppelin" / "contracts").is_dir():
        raise ToolchainError(f"the npm package `@openzeppelin/contracts` is missing: {_NPM_FIX}")
    version = _version_of(SHIM)
    if version is None:
        raise ToolchainError(f"{SHIM} --version failed (is node working?): {_NPM_FIX}")
    if not version.startswith(SOLC_VERSION + "+"):
        raise ToolchainError(f"node_modules has solc {version}, the build pins {SOLC_VERSION}: {_NPM_FIX}")
    return Compiler(SHIM, version, native=False)


def collect_sources(sources_dir: Path, root: Path) -> dict[str, str]:
    """Every `*.sol` under `sources_dir`, keyed by its posix path relative to `root`, in sorted order.

    Raises ToolchainError if there are none.
    """
    files = sorted(p for p in sources_dir.rglob("*.sol") if p.is_file())
    if not files:
        raise ToolchainError(f"no Solidity sources (*.sol) under {sources_dir}")
    return {p.resolve().relative_to(root.resolve()).as_posix(): p.read_text(encoding="utf-8") for p in files}


def _source_text(name: str, sources: dict[str, str], root: Path) -> str | None:
    if name in sources:
        return sources[name]
    for base in (root, NODE_MODULES):
        if (base / name).is_file():
            return (base / name).read_text(encoding="utf-8")
    return None


def _format(err: dict[str, Any], sources: dict[str, str], root: Path) -> str:
    """`file:line:col: Type: message` (one line) for a standard-JSON error or warning."""
    where = ""
    loc = err.get("sourceLocation") or {}
    if loc.get("file"):
        text = _source_text(loc["file"], sources, root)
        start = max(int(loc.get("start", 0)), 0)
        if text is not None:
            before = text.encode("utf-8")[:start]
            line = before.count(b"\n") + 1
            col = start - (before.rfind(b"\n") + 1) + 1
            where = f"{loc['file']}:{line}:{col}: "
        else:
            where = f"{loc['file']}: "
    return f"{where}{err.get('type', 'Error')}: {err.get('message', '').strip()}"


def standard_input(sources: dict[str, str]) -> dict[str, Any]:
    """The solc standard-JSON input compiling `sources` (name -> content) with `compiler_settings()`."""
    return {"language": "Solidity", "settings": compiler_settings(),
            "sources": {name: {"content": text} for name, text in sorted(sources.items())}}


def compile_standard(sources: dict[str, str], root: Path, compiler: Compiler) -> dict[str, Any]:
    """Run standard-JSON compilation of `sources` (name -> content) with py-solc-x and `compiler`.

    Imports not in `sources` (OpenZeppelin) are read from node_modules. Returns the compiler output; its
    `errors` list then holds warnings only. Raises ToolchainError with `file:line:col` lines on errors.
    """
    try:
        import solcx
        from solcx.exceptions import SolcError
    except ImportError as err:
        raise ToolchainError("py-solc-x is not installed: pip install -e '.[build]'") from err
    std_input = standard_input(sources)
    try:
        output = solcx.compile_standard(std_input, solc_binary=compiler.binary, base_path=NODE_MODULES,
                                        allow_paths=[NODE_MODULES])
    except SolcError as err:
        problems = [e for e in (err.error_dict or []) if e.get("severity") == "error"]
        if not problems:
            detail = (err.stderr_data or err.stdout_data or str(err)).strip().splitlines()
            raise ToolchainError(f"solc failed: {detail[-1] if detail else err}") from None
        lines = "\n".join(_format(e, sources, root) for e in problems)
        raise ToolchainError(f"solc: {len(problems)} compile error(s):\n{lines}") from None
    except (OSError, ValueError) as err:
        raise ToolchainError(f"could not run {compiler.binary}: {err}") from err
    return output


def make_artifacts(sources: dict[str, str], output: dict[str, Any], root: Path,
                   compiler: Compiler) -> dict[str, str]:
    """Artifact file name -> canonical JSON text, for every contract of `sources` with bytecode and an ABI
    (interfaces, abstract contracts and internal-only libraries have nothing to deploy, call or link), plus
    `build-info.json` with the standard-JSON input of every compiled source. Raises ToolchainError on duplicate
    contract names."""
    settings = compiler_settings()
    files: dict[str, str] = {}
    for source_name in sorted(sources):
        for name, contract in sorted(output.get("contracts", {}).get(source_name, {}).items()):
            evm = contract.get("evm", {})
            bytecode = evm.get("bytecode", {}).get("object", "")
            if not bytecode or not contract.get("abi"):
                continue  # interface, abstract contract, library of internal functions only
            if f"{name}.json" in files:
                raise ToolchainError(f"two contracts named {name} ({source_name}): names must be unique")
            art: dict[str, Any] = {
                "contractName": name, "sourceName": source_name, "abi": contract.get("abi", []),
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + evm.get("deployedBytecode", {}).get("object", ""),
                "compiler": {"version": compiler.version, "settings": settings},
                "metadata": contract.get("metadata", ""),
                "devdoc": contract.get("devdoc", {}), "userdoc": contract.get("userdoc", {}),
            }
            links = evm.get("bytecode", {}).get("linkReferences") or {}
            if links:
                art["linkReferences"] = links
            files[f"{name}.json"] = dumps_canonical(art)
    source_hashes = {}
    compiled: dict[str, str] = {}
    for name in sorted(output.get("sources", {})):
        text = _source_text(name, sources, root)
        if text is None:
            raise ToolchainError(f"compiled source {name} not found under {root} or {NODE_MODULES}")
        source_hashes[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        compiled[name] = text
    packages = {}
    for pkg in ("solc", "@openzeppelin/contracts"):
        meta = NODE_MODULES / pkg / "package.json"
        packages[pkg] = json.loads(meta.read_text())["version"] if meta.is_file() else None
    files[BUILD_INFO] = dumps_canonical({
        "compiler": {"version": compiler.version, "settings": settings},
        "npmPackages": packages, "sources": source_hashes,
        "contracts": sorted(f[:-5] for f in files),
        # Self-contained (imports included): what a block explorer needs to verify any of the contracts.
        "input": standard_input(compiled),
    })
    return files


def write_artifacts(files: dict[str, str], out_dir: Path) -> list[str]:
    """Write `files` into `out_dir`, removing stale `*.json`; returns the names whose bytes changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for stale in artifact_files(out_dir):
        if stale.name not in files:
            stale.unlink()
            changed.append(stale.name)
    for name, text in sorted(files.items()):
        path = out_dir / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(name)
    return sorted(changed)


def diff_dirs(expected: Path, actual: Path) -> list[str]:
    """Names of artifact files that differ between two artifact dirs (missing on either side counts)."""
    a = {p.name: p.read_bytes() for p in artifact_files(expected)}
    b = {p.name: p.read_bytes() for p in artifact_files(actual)}
    return sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))


def build(check: bool = False, *, sources_dir: Path | None = None, root: Path | None = None,
          out_dir: Path | None = None) -> BuildResult:
    """Compile every `*.sol` under `sources_dir` (default `contracts/`) and write artifacts to `out_dir`
    (default `marketplace/artifacts`). Source keys are relative to `root` (default: the repo root, or
    the parent of `sources_dir`).

    check=True compiles into a temp dir and leaves `out_dir` untouched; it raises ToolchainError naming the
    files where the committed artifacts differ from the fresh build. Raises ToolchainError on missing
    tools, compile errors (with file:line:col) or duplicate contract names; warnings are returned.
    """
    sources_dir = (sources_dir or CONTRACTS_DIR).resolve()
    root = (root or (REPO_ROOT if sources_dir == CONTRACTS_DIR.resolve() else sources_dir.parent)).resolve()
    out_dir = (out_dir or ARTIFACTS_DIR).resolve()
    compiler = find_compiler()
    sources = collect_sources(sources_dir, root)
    output = compile_standard(sources, root, compiler)
    warnings = [_format(e, sources, root) for e in output.get("errors", []) if e.get("severity") != "error"]
    files = make_artifacts(sources, output, root, compiler)
    artifacts = {n[:-5]: json.loads(t) for n, t in files.items() if n != BUILD_INFO}
    if check:
        with tempfile.TemporaryDirectory(prefix="agora-build-") as tmp:
            write_artifacts(files, Path(tmp))
            differing = diff_dirs(out_dir, Path(tmp))
            if differing:
                raise ToolchainError(
                    f"committed artifacts in {out_dir} differ from a fresh build: {', '.join(differing)}; "
                    "run `agora contracts build` and commit marketplace/artifacts")
        return BuildResult(artifacts, warnings, out_dir, compiler, artifact_hash(out_dir))
    written = write_artifacts(files, out_dir)
    return BuildResult(artifacts, warnings, out_dir, compiler, artifact_hash(out_dir), written)
