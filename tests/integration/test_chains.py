"""The three local chains start, share the dev accounts, travel in time, and stop without leftovers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.devchain import CHAIN_IDS, DEV_ACCOUNTS, LocalChain, mine, rpc_call, time_travel
from marketplace.errors import ChainError

pytestmark = pytest.mark.integration

DEV0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
REPO = Path(__file__).resolve().parents[2]


def _timestamp(url: str) -> int:
    return int(rpc_call(url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("kind", ["anvil", "ganache", "hardhat"])
def test_chain_lifecycle(kind: str) -> None:
    chain = LocalChain(kind)
    with chain:
        assert chain.running and chain.kind == kind
        assert int(rpc_call(chain.rpc_url, "eth_chainId"), 16) == CHAIN_IDS[kind] == chain.chain_id
        assert int(rpc_call(chain.rpc_url, "eth_getBalance", [DEV0, "latest"]), 16) > 0
        accounts = [a.lower() for a in rpc_call(chain.rpc_url, "eth_accounts")]
        assert accounts[:10] == [addr.lower() for _, addr in DEV_ACCOUNTS]
        assert chain.dev_private_keys[0] == DEV_ACCOUNTS[0][0]

        before = _timestamp(chain.rpc_url)
        after = time_travel(chain.rpc_url, 3600)
        assert after - before >= 3600
        assert _timestamp(chain.rpc_url) == after
        block = int(rpc_call(chain.rpc_url, "eth_blockNumber"), 16)
        assert mine(chain.rpc_url) == block + 1
        pid, port = chain.pid, chain.port
        assert pid is not None
    assert not chain.running and chain.pid is None
    assert _group_gone(pid)
    assert _port_closed(port)
    chain.stop()  # idempotent


@pytest.mark.parametrize("kind", ["anvil", "ganache", "hardhat"])
def test_missing_binary_is_a_chain_error(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_NODE_MODULES", str(tmp_path))
    chain = LocalChain(kind)
    with pytest.raises(ChainError, match="npm ci"):
        chain.start()
    assert not chain.running


def test_unknown_kind_is_a_chain_error() -> None:
    with pytest.raises(ChainError, match="unknown chain kind"):
        LocalChain("geth")


def test_taken_port_is_a_chain_error(anvil: LocalChain) -> None:
    with pytest.raises(ChainError, match="already in use"):
        LocalChain("anvil", port=anvil.port).start()
    assert anvil.running


def test_w3_fixture(w3, anvil: LocalChain) -> None:  # type: ignore[no-untyped-def]
    assert w3.is_connected()
    assert w3.eth.chain_id == 31337
    assert w3.eth.get_balance(DEV0) > 0


def _block(anvil: LocalChain) -> int:
    return int(rpc_call(anvil.rpc_url, "eth_blockNumber"), 16)


@pytest.fixture
def block_before_snapshot(anvil: LocalChain) -> Iterator[int]:
    """Requested before `evm_snapshot`, so set up before it and torn down after it: yields the block number
    before the snapshot, and fails the test if `evm_snapshot`'s teardown did not bring it back."""
    block = _block(anvil)
    yield block
    assert _block(anvil) == block, "evm_snapshot did not revert the blocks its test mined"


def test_evm_snapshot_changes_state(evm_snapshot: str, anvil: LocalChain) -> None:
    block = _block(anvil)
    for _ in range(3):
        mine(anvil.rpc_url)
    assert _block(anvil) == block + 3


def test_evm_snapshot_reverts_the_blocks_its_test_mined(block_before_snapshot: int, evm_snapshot: str,
                                                        anvil: LocalChain) -> None:
    for _ in range(3):
        mine(anvil.rpc_url)
    assert _block(anvil) == block_before_snapshot + 3  # reverted at teardown (checked by block_before_snapshot)


def test_ganache_fixture(ganache_chain: LocalChain) -> None:
    assert int(rpc_call(ganache_chain.rpc_url, "eth_chainId"), 16) == 1337
    assert int(rpc_call(ganache_chain.rpc_url, "eth_getBalance", [DEV0, "latest"]), 16) == 10_000 * 10**18


def test_hardhat_fixture(hardhat_chain: LocalChain) -> None:
    assert int(rpc_call(hardhat_chain.rpc_url, "eth_chainId"), 16) == 31337
    assert int(rpc_call(hardhat_chain.rpc_url, "eth_getBalance", [DEV0, "latest"]), 16) == 10_000 * 10**18


def test_cli_chain_up_runs_until_sigterm() -> None:
    cmd = [sys.executable, "-c", "from marketplace.cli import main; main()", "chain", "up", "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # emit_json prints one indented object ending with "}"
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["chain_id"] == 31337 and info["kind"] == "anvil"
        assert info["accounts"][0] == {"address": DEV0, "private_key": DEV_ACCOUNTS[0][0]}
        assert int(rpc_call(info["rpc_url"], "eth_chainId"), 16) == 31337
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while not _group_gone(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_gone(info["pid"])
    assert _port_closed(int(info["rpc_url"].rsplit(":", 1)[1]))
