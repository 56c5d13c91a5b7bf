"""The p2p layer against a real peer in another process: noise + yamux on loopback, framed request/response,
ping and hung-peer detection, frame limits, peer records.

Each test runs its own trio loop and client host; the peer (`_peer.py`) runs in a child process that every
fixture kills, whatever happened.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import multiaddr
import pytest

pytest.importorskip("libp2p")
trio = pytest.importorskip("trio")

from eth_account import Account

from marketplace.p2p import (
    MAX_FRAME,
    FrameError,
    FrameTooLargeError,
    PeerRecord,
    PeerRecordError,
    PeerTimeoutError,
    PeerUnreachableError,
    load_or_create_key,
    open_host,
    peer_info,
    read_frame,
    verify_peer_record,
    write_frame,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PEER = Path(__file__).with_name("_peer.py")
ROOT = Path(__file__).resolve().parents[2]
ECHO = "/agora/echo/1"
RECORD = "/agora/record/1"
BOOM = "/agora/boom/1"
CHAIN_ID = 31337
# Two anvil dev keys: the peer's account and "someone else".
ETH_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
OTHER_KEY = "0x59c47ca0f6b0f3b45fe64b0ad8e4a7a5c4d3e6ac0a6e1e6a3c6f2d6b2ab0f1f8"


class Peer:
    def __init__(self, proc: subprocess.Popen[str], addr: str) -> None:
        self.proc = proc
        self.addr = addr

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def start_peer(tmp: Path) -> Peer:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(PEER), str(tmp / "peer.key"), ETH_KEY, str(CHAIN_ID)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 20
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline().strip()
                if "/p2p/" in line:
                    return Peer(proc, line)
            if proc.poll() is not None:
                raise RuntimeError(f"peer exited with {proc.returncode}")
        raise RuntimeError("peer printed no multiaddr within 20 s")
    except BaseException:
        Peer(proc, "").stop()
        raise


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    p = start_peer(tmp_path_factory.mktemp("peer"))
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def hung_peer(tmp_path: Path) -> Iterator[Peer]:
    """A peer of its own, for the test that SIGSTOPs it."""
    p = start_peer(tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def client_key(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_or_create_key(tmp_path / "client" / "p2p-identity.key")


def test_identity_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "home" / "p2p-identity.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_key(path)
    assert again.private_key.to_bytes() == key.private_key.to_bytes()


def test_echo_and_ping(peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with open_host(key=client_key) as node:
            assert node.addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in node.addr
            await node.connect(peer.addr)
            assert await node.request(peer.addr, ECHO, b"hello agora", timeout=5) == b"hello agora"
            assert await node.request(peer.addr, ECHO, b"", timeout=5) == b""
            big = os.urandom(512 * 1024)
            assert await node.request(peer.addr, ECHO, big, timeout=10) == big
            rtt = await node.ping(peer.addr, timeout=5)
            assert 0 < rtt < 5
            # One connection to the peer, over noise (the only security transport offered).
            conns = node.host.get_network().get_connections(peer_info(peer.addr).peer_id)
            assert len(conns) == 1

    trio.run(main)


def test_oversized_and_truncated_frames_are_rejected_and_peer_survives(peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with open_host(key=client_key) as node:
            # Refused locally before anything is sent.
            with pytest.raises(FrameTooLargeError):
                await node.request(peer.addr, ECHO, b"x" * (MAX_FRAME + 1), timeout=5)
            # A raw stream announcing 2 MiB: the peer resets it instead of reading (or crashing).
            stream = await node.open_stream(peer.addr, ECHO)
            await stream.write(struct.pack(">I", 2 * MAX_FRAME) + b"junk")
            with pytest.raises(FrameError):
                await read_frame(stream, timeout=5)
            # A truncated frame (header says 100, 3 bytes then EOF): the peer gives up on that stream.
            stream = await node.open_stream(peer.addr, ECHO)
            await stream.write(struct.pack(">I", 100) + b"abc")
            await stream.close_write()
            with pytest.raises(FrameError):
                await read_frame(stream, timeout=5)
            # Our own reader rejects an oversized reply the same way.
            stream = await node.open_stream(peer.addr, ECHO)
            await write_frame(stream, b"y" * 2000)
            with pytest.raises(FrameTooLargeError):
                await read_frame(stream, max_size=1000, timeout=5)
            await stream.reset()
            # The peer still answers normal requests.
            assert await node.request(peer.addr, ECHO, b"still there", timeout=5) == b"still there"
            await node.ping(peer.addr, timeout=5)

    trio.run(main)


def test_failing_handler_resets_only_its_stream(peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with open_host(key=client_key) as node:
            with pytest.raises(FrameError):
                await node.request(peer.addr, BOOM, b"x", timeout=5)
            with pytest.raises(PeerUnreachableError):  # a protocol the peer does not serve
                await node.request(peer.addr, "/agora/nope/1", b"x", timeout=5)
            assert await node.request(peer.addr, ECHO, b"ok", timeout=5) == b"ok"

    trio.run(main)


def test_plaintext_is_not_offered(peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    """A client that only speaks /plaintext/2.0.0 (where a peer may claim any id) cannot connect."""
    from libp2p import new_host
    from libp2p.network.exceptions import SwarmDialAllFailedError
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    async def main() -> None:
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        host = new_host(key_pair=client_key, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(client_key)},
                        listen_addrs=listen)
        async with host.run(listen):
            try:
                with trio.fail_after(10), pytest.raises(SwarmDialAllFailedError):
                    await host.connect(peer_info(peer.addr))
                assert peer_info(peer.addr).peer_id not in host.get_connected_peers()
            finally:
                await host.close()

    trio.run(main)


def test_hung_peer_is_detected_by_ping_timeout(hung_peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with open_host(key=client_key) as node:
            await node.connect(hung_peer.addr)
            await node.ping(hung_peer.addr, timeout=5)
            os.kill(hung_peer.proc.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(PeerTimeoutError):
                    await node.ping(hung_peer.addr, timeout=1.0)
                assert time.monotonic() - start < 2.5
                # libp2p itself still believes the peer is connected: only the ping notices.
                assert peer_info(hung_peer.addr).peer_id in node.host.get_connected_peers()
            finally:
                os.kill(hung_peer.proc.pid, signal.SIGCONT)
            assert await node.request(hung_peer.addr, ECHO, b"back", timeout=5) == b"back"

    trio.run(main)
    hung_peer.stop()
    assert hung_peer.proc.returncode is not None


def test_peer_record_binds_peer_id_to_address(peer: Peer, client_key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> bytes:
        async with open_host(key=client_key) as node:
            return await node.request(peer.addr, RECORD, b"", timeout=5)

    record = PeerRecord.from_json(json.loads(trio.run(main)))
    peer_id = peer_info(peer.addr).peer_id
    assert verify_peer_record(record, peer_id, chain_id=CHAIN_ID) == Account.from_key(ETH_KEY).address

    # Signed by another key but claiming the peer's address: rejected.
    forged = PeerRecord.sign(OTHER_KEY, peer_id, CHAIN_ID)
    forged = PeerRecord(peer_id=forged.peer_id, address=record.address, chain_id=CHAIN_ID, signature=forged.signature)
    with pytest.raises(PeerRecordError):
        verify_peer_record(forged, peer_id)
    # A genuine record shown for another peer id, or for another chain: rejected.
    with pytest.raises(PeerRecordError):
        verify_peer_record(record, str(peer_info(f"/ip4/127.0.0.1/tcp/1/p2p/{client_id(client_key)}").peer_id))
    with pytest.raises(PeerRecordError):
        verify_peer_record(record, peer_id, chain_id=1)
    tampered = PeerRecord(peer_id=record.peer_id, address=record.address, chain_id=record.chain_id + 1,
                          signature=record.signature)
    with pytest.raises(PeerRecordError):
        verify_peer_record(tampered, peer_id)
    with pytest.raises(PeerRecordError):
        PeerRecord.from_json({"version": 1, "peer_id": "x"})


def client_id(key) -> str:  # type: ignore[no-untyped-def]
    from marketplace.p2p import peer_id_of

    return str(peer_id_of(key))
