"""The offline Solidity build: solc shim, reproducible artifacts, committed artifacts up to date, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import marketplace.build as build_mod
from marketplace.build import SHIM, SOLC_VERSION, BuildResult, Compiler, build
from marketplace.compiled import ARTIFACTS_DIR, artifact_hash, contract_names, load_artifact
from marketplace.errors import ToolchainError

COUNTER = """// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ICounter} from "./interfaces/ICounter.sol";

library Twice {
    function twice(uint256 x) external pure returns (uint256) { return 2 * x; }
}

abstract contract Base { function base() external virtual returns (uint256); }

contract Counter is ICounter, Ownable {
    uint256 public count;
    constructor(address owner_) Ownable(owner_) {}
    function bump() external onlyOwner returns (uint256) { return ++count; }
}
"""
ICOUNTER = """// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface ICounter { function bump() external returns (uint256); }
"""


def _write_project(root: Path) -> Path:
    (root / "contracts" / "interfaces").mkdir(parents=True)
    (root / "contracts" / "Counter.sol").write_text(COUNTER)
    (root / "contracts" / "interfaces" / "ICounter.sol").write_text(ICOUNTER)
    return root / "contracts"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildResult, Path, BuildResult, Path]:
    """The same throwaway sources, in two different directories, built twice."""
    results = []
    for name in ("first", "second-checkout"):
        root = tmp_path_factory.mktemp(name)
        out = root / "artifacts"
        results += [build(sources_dir=_write_project(root), root=root, out_dir=out), out]
    return tuple(results)  # type: ignore[return-value]


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_shim_answers_version_like_native_solc() -> None:
    proc = subprocess.run([str(SHIM), "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert re.fullmatch(r"solc, the solidity compiler commandline interface\n"
                        rf"Version: {re.escape(SOLC_VERSION)}\+commit\.[0-9a-f]{{8}}\.Emscripten\.clang\n",
                        proc.stdout), proc.stdout
    solcx = pytest.importorskip("solcx")
    assert str(solcx.wrapper.get_solc_version(SHIM)) == SOLC_VERSION


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_shim_standard_json_prints_only_json_and_resolves_imports(tmp_path: Path) -> None:
    _write_project(tmp_path)
    std_input = {"language": "Solidity",
                 "sources": {"contracts/Counter.sol": {"urls": ["contracts/Counter.sol"]}},
                 "settings": {"outputSelection": {"*": {"*": ["abi"]}}}}
    proc = subprocess.run(
        [str(SHIM), "--standard-json", "--base-path", str(tmp_path),
         "--include-path", str(build_mod.NODE_MODULES), "--allow-paths", str(tmp_path)],
        input=json.dumps(std_input), capture_output=True, text=True, timeout=120, check=True)
    output = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert not [e for e in output.get("errors", []) if e["severity"] == "error"], output["errors"]
    assert "@openzeppelin/contracts/access/Ownable.sol" in output["sources"]
    assert "contracts/interfaces/ICounter.sol" in output["sources"]


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_committed_artifacts_match_a_fresh_build() -> None:
    assert contract_names(), (
        f"{ARTIFACTS_DIR} holds no contract artifacts: run `agora contracts build` and commit them")
    result = build(check=True)  # raises ToolchainError listing the differing files
    assert sorted(result.artifacts) == contract_names()
    for name in contract_names():
        art = load_artifact(name)
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 2
        assert art["sourceName"].startswith("contracts/")
        assert art["compiler"]["settings"]["evmVersion"] == "shanghai"
    assert result.artifact_hash == artifact_hash()


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_same_sources_give_byte_identical_artifacts(two_builds: tuple) -> None:
    first, out1, second, out2 = two_builds
    files1 = {p.name: p.read_bytes() for p in sorted(out1.glob("*.json"))}
    files2 = {p.name: p.read_bytes() for p in sorted(out2.glob("*.json"))}
    assert files1 == files2
    assert first.artifact_hash == second.artifact_hash
    # interfaces and abstract contracts are skipped; libraries with bytecode are kept
    assert sorted(files1) == ["Counter.json", "Twice.json", "build-info.json"]
    text = files1["Counter.json"].decode()
    assert text.endswith("}\n") and str(out1.parent) not in text
    info = json.loads(files1["build-info.json"])
    assert info["compiler"]["settings"]["optimizer"] == {"enabled": True, "runs": build_mod.OPTIMIZER_RUNS}
    assert "@openzeppelin/contracts/access/Ownable.sol" in info["sources"]
    assert set(load_artifact("Counter", out1)) >= {"contractName", "sourceName", "abi", "bytecode",
                                                   "deployedBytecode", "compiler"}


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_check_reports_stale_artifacts(two_builds: tuple, tmp_path: Path) -> None:
    _, out1, _, _ = two_builds
    stale = tmp_path / "stale"
    shutil.copytree(out1, stale)
    (stale / "Counter.json").write_text("{}\n")
    (stale / "Old.json").write_text("{}\n")
    with pytest.raises(ToolchainError, match=r"Counter\.json, Old\.json"):
        build(check=True, sources_dir=_write_project(tmp_path), root=tmp_path, out_dir=stale)


@pytest.mark.integration  # runs the solc compiler (a node.js process)
def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "Bad.sol").write_text(
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.24;\n\ncontract Bad {\n    uint256 x\n}\n")
    with pytest.raises(ToolchainError) as info:
        build(sources_dir=tmp_path / "contracts", root=tmp_path, out_dir=tmp_path / "out")
    assert re.search(r"contracts/Bad\.sol:6:1: ParserError", str(info.value)), str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_node_or_solc_says_npm_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build_mod.shutil, "which", lambda _name: None)
    with pytest.raises(ToolchainError, match="npm ci"):
        build_mod.find_compiler()
    monkeypatch.setattr(build_mod.shutil, "which", lambda name: None if name == "solc" else "/usr/bin/node")
    monkeypatch.setattr(build_mod, "NODE_MODULES", tmp_path)
    with pytest.raises(ToolchainError, match="npm ci"):
        build_mod.find_compiler()


def test_cli_build_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import marketplace.cli.contracts  # noqa: F401  (registers the sub-app)
    from marketplace.cli import app

    art = {"sourceName": "contracts/X.sol", "bytecode": "0x6001", "deployedBytecode": "0x00"}
    fake = BuildResult({"X": art}, ["w"], tmp_path, Compiler(SHIM, "0.8.30+commit.x", False), "ab")
    seen: dict[str, bool] = {}

    def fake_build(check: bool = False) -> BuildResult:
        seen["check"] = check
        return fake

    monkeypatch.setattr(build_mod, "build", fake_build)
    result = CliRunner().invoke(app, ["contracts", "build", "--check", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert seen["check"] is True
    assert data["contracts"] == [
        {"name": "X", "source": "contracts/X.sol", "bytecode_size": 2, "deployed_size": 1}]

    def boom(check: bool = False) -> BuildResult:
        raise ToolchainError("the npm package `solc` is missing: run `npm ci` in the repo root")

    monkeypatch.setattr(build_mod, "build", boom)
    result = CliRunner().invoke(app, ["contracts", "build"])
    assert result.exit_code == 1 and "npm ci" in result.output
