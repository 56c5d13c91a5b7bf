"""Discovery and liveness with real processes on 127.0.0.1: one `agora p2p bootstrap` and three market nodes
(`_peer.py --node`) that are each given only the bootstrap's address.

- they find each other through the bootstrap's rendezvous point and connect directly (not only to the
  bootstrap), and a gossip message published by one reaches the other two (the bootstrap does not subscribe to
  the topic, so it cannot relay it: delivery proves the node-to-node mesh);
- a SIGSTOPped node is dropped by its neighbours' liveness loops (it stays "connected" in libp2p otherwise);
- the bootstrap keeps its peer id across restarts (identity in --key-file) and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("libp2p")

from _peer import PeerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PEER = Path(__file__).with_name("_peer.py")
TOPIC = "agora/1/jobs/inference/cpu"


def start_bootstrap(key_file: Path) -> PeerProcess:
    return PeerProcess([sys.executable, "-m", "marketplace.cli", "p2p", "bootstrap", "--listen",
                        "/ip4/127.0.0.1/tcp/0", "--key-file", str(key_file), "--json"])


def start_node(key_file: Path, bootstrap: str) -> PeerProcess:
    return PeerProcess([sys.executable, str(PEER), "--node", str(key_file), bootstrap, TOPIC])


def state(node: PeerProcess) -> dict[str, Any]:
    return node.command({"cmd": "state"}, reply="state")


def eventually(check: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll `check` until it holds; fail with `what` when it does not within `within` seconds (a bound on
    waiting, not a timing assertion)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.2)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[PeerProcess, list[PeerProcess]]]:
    procs: list[PeerProcess] = []
    try:
        boot = start_bootstrap(tmp_path / "boot.key")
        procs.append(boot)
        nodes = []
        for i in range(3):
            node = start_node(tmp_path / f"node{i}.key", boot.addr)
            procs.append(node)
            nodes.append(node)
        yield boot, nodes
    finally:
        for p in procs:
            p.stop()


def test_nodes_find_each_other_and_gossip_without_the_bootstrap(network) -> None:  # type: ignore[no-untyped-def]
    boot, nodes = network
    ids = {n.peer_id for n in nodes}
    for node in nodes:
        others = ids - {node.peer_id}
        eventually(lambda node=node, others=others: others <= set(state(node)["peers"]), within=30,
                   what=f"{node.peer_id} connected to the two other nodes")
        peers = set(state(node)["peers"])
        assert boot.peer_id in peers  # and still to the bootstrap
        info = state(node)["discovery"]
        assert info["registered"] == 1 and info["discovered"] >= 2  # itself and at least one other node
    for node in nodes:
        reply = node.command({"cmd": "wait_topic_peers", "count": 2}, reply="topic_peers")
        assert reply["ok"], reply
        assert boot.peer_id not in reply["peers"]  # the bootstrap is not on the topic: it cannot relay

    payload = os.urandom(24).hex()
    nodes[0].command({"cmd": "publish", "data": payload}, reply="published")
    for node in nodes[1:]:
        eventually(lambda node=node: any(m["data"] == payload for m in node.received()), within=20,
                   what=f"{node.peer_id} received the gossip message")
        got = [m for m in node.received() if m["data"] == payload]
        assert len(got) == 1 and got[0]["origin"] == nodes[0].peer_id


def test_sigstopped_node_is_dropped_by_its_neighbours(network) -> None:  # type: ignore[no-untyped-def]
    boot, nodes = network
    ids = {n.peer_id for n in nodes}
    for node in nodes:
        eventually(lambda node=node: ids - {node.peer_id} <= set(state(node)["peers"]), within=30,
                   what=f"{node.peer_id} connected to the two other nodes")
    hung, alive = nodes[2], nodes[:2]
    os.kill(hung.proc.pid, signal.SIGSTOP)
    try:
        for node in alive:
            eventually(lambda node=node: hung.peer_id not in state(node)["peers"], within=30,
                       what=f"{node.peer_id} dropped the SIGSTOPped {hung.peer_id}")
            s = state(node)
            assert s["dropped"] >= 1
            # the healthy part of the network stays connected
            assert boot.peer_id in s["peers"] and ({n.peer_id for n in alive} - {node.peer_id}) <= set(s["peers"])
        # not re-dialled while it is hung (dropped peers are backed off), even after more discovery rounds
        time.sleep(3)
        for node in alive:
            assert hung.peer_id not in state(node)["peers"]
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
        hung.stop()
    assert hung.proc.returncode is not None


def test_bootstrap_identity_is_stable_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    key = tmp_path / "boot.key"
    first = start_bootstrap(key)
    try:
        first_id = first.peer_id
        first.proc.send_signal(signal.SIGTERM)
        stopped = first.wait_event("stopped", 20)
        assert first.proc.wait(20) == 0
        assert stopped["peer_id"] == first_id
    finally:
        first.stop()
    assert key.stat().st_mode & 0o777 == 0o600
    second = start_bootstrap(key)
    try:
        assert second.peer_id == first_id
        # and `agora p2p ping` reaches it
        out = subprocess.run([sys.executable, "-m", "marketplace.cli", "p2p", "ping", second.addr, "--json"],
                             capture_output=True, text=True, timeout=60, check=True)
        result = json.loads(out.stdout)
        assert result["peer_id"] == first_id and len(result["rtt_ms"]) == 1
    finally:
        second.stop()
