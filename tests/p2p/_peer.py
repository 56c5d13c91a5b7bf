"""Test peers, each in its own process. Three modes:

- `python _peer.py KEYFILE ETH_KEY CHAIN_ID`: serves `/agora/echo/1` (echo), `/agora/record/1` (its peer record as
  JSON, signed by ETH_KEY), `/agora/boom/1` (a handler that raises) and the built-in ping; prints its multiaddr
  (with /p2p/<id>) on one stdout line, then runs until killed or stdin closes.
- `python _peer.py --node KEYFILE BOOTSTRAP TOPIC`: a market node: gossip host, `maintain_peers` with the one
  bootstrap address (fast liveness: ping every 1 s, 3 s timeout, 2 misses), subscribed to TOPIC.
- `python _peer.py --fuzz-target KEYFILE CHAIN_ID MARKET`: serves /agora/bid/1, /agora/assign/1, /agora/result/1
  and /agora/blob/1 with handlers that decode with `marketplace.protocol.decode` (and count), and validates
  gossip on every job topic with `AnnounceValidator` (counting rejections by reason).

The last two print one JSON line {"event": "ready", "peer_id", "addr"} and then answer JSON commands, one per
stdin line, with one JSON stdout line each (see `_command`): {"cmd": "state"}, {"cmd": "publish", "data": hex},
{"cmd": "wait_topic_peers", "count": n}. Received gossip is reported as {"event": "msg", "data", "origin"} lines.
They exit when stdin closes, so no peer outlives its test.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from marketplace import admission
from marketplace.p2p import PeerRecord, load_or_create_key, maintain_peers, open_host
from marketplace.p2p.host import P2PHost

ECHO = "/agora/echo/1"
RECORD = "/agora/record/1"
BOOM = "/agora/boom/1"


async def main(key_file: str, eth_key: str, chain_id: int) -> None:
    key = load_or_create_key(Path(key_file))
    async with open_host(key=key) as node:
        record = json.dumps(PeerRecord.sign(eth_key, node.peer_id, chain_id).to_json()).encode()

        async def echo(payload: bytes, peer: object) -> bytes:
            return payload

        async def give_record(payload: bytes, peer: object) -> bytes:
            return record

        async def boom(payload: bytes, peer: object) -> bytes:
            raise RuntimeError("handler bug")

        node.serve(ECHO, echo)
        node.serve(BOOM, boom)
        node.serve(RECORD, give_record)
        print(node.addr, flush=True)
        # Exit when the parent goes away (stdin closes) so no peer outlives its test.
        await trio.wrap_file(sys.stdin).read()


# ---------------------------------------------------------------------------------------------------- harness
class PeerProcess:
    """The test side of a child process that speaks JSON lines (node, fuzz target, `agora p2p bootstrap`).

    A reader thread collects stdout lines, so waiting never blocks on a full pipe; gossip `msg` events are kept
    apart in `messages`. `stop()` resumes a SIGSTOPped child, terminates it, then kills it if needed."""

    def __init__(self, argv: list[str], *, cwd: Path | None = None, ready_timeout: float = 30.0) -> None:
        import os
        import queue
        import subprocess
        import threading

        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=cwd or root)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.ready = self.wait_event("ready", ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("event") == "msg":
                    with self._lock:
                        self.messages.append(obj)
                else:
                    self.lines.put(obj)
        except (ValueError, OSError):  # stdout closed by stop()
            return

    @property
    def addr(self) -> str:
        return str(self.ready.get("addr") or self.ready["addrs"][0])

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} line from {self.proc.args} within {timeout} s")
            try:
                obj = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.proc.args} exited with {self.proc.returncode}") from None
                continue
            if obj.get("event") == event:
                return obj

    def command(self, cmd: dict[str, Any], *, reply: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.wait_event(reply, timeout)

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        import os
        import signal
        import subprocess

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
                try:
                    f.close()
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------------------- node mode
def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


async def command_loop(handle: Any) -> None:
    """Answer one JSON command per stdin line until stdin closes."""
    stdin = trio.wrap_file(sys.stdin)
    while True:
        line = await stdin.readline()
        if not line:
            return
        if line.strip():
            emit(await handle(json.loads(line)))


async def node_main(key_file: str, bootstrap: str, topic: str) -> None:
    key = load_or_create_key(Path(key_file))
    async with open_host(key=key, gossip=True) as node, trio.open_nursery() as nursery:
        maintainer = await nursery.start(_maintain, node, bootstrap)
        sub = await node.gossip.subscribe(topic)

        async def pump() -> None:
            async for msg in sub:
                emit({"event": "msg", "data": msg.data.hex(), "origin": str(msg.origin)})

        nursery.start_soon(pump)
        emit({"event": "ready", "peer_id": str(node.peer_id), "addr": node.addr})

        async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
            if cmd["cmd"] == "publish":
                await node.gossip.publish(topic, bytes.fromhex(cmd["data"]))
                return {"event": "published"}
            if cmd["cmd"] == "wait_topic_peers":
                ok = await node.gossip.wait_for_topic_peers(topic, cmd["count"], timeout=cmd.get("timeout", 20))
                return {"event": "topic_peers", "ok": ok, "peers": [str(p) for p in node.gossip.topic_peers(topic)]}
            return {"event": "state", "peers": [str(p) for p in node.connected_peers()],
                    "dropped": maintainer.liveness.stats.dropped, "discovery": vars(maintainer.stats)}

        await command_loop(handle)
        nursery.cancel_scope.cancel()


async def _maintain(node: P2PHost, bootstrap: str, *, task_status: Any) -> None:
    await maintain_peers(node, [bootstrap], refresh=1.0, ping_interval=1.0, ping_timeout=3.0, ping_misses=2,
                         task_status=task_status)


# ---------------------------------------------------------------------------------------------------- fuzz target
class _StreamRejects(logging.Handler):
    """Counts P2PHost.serve's "rejected a stream" log lines per protocol (junk frames that never reach a handler)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if ": rejected a stream:" in text:
            self.counts[text.split(":", 1)[0]] += 1


async def fuzz_main(key_file: str, chain_id: int, market: str) -> None:
    from marketplace import protocol as P

    frame_rejects = _StreamRejects()
    host_log = logging.getLogger("marketplace.p2p.host")
    host_log.setLevel(logging.INFO)
    host_log.addHandler(frame_rejects)
    host_log.propagate = False
    expect = {P.BID_PROTOCOL: P.BidOffer, P.ASSIGN_PROTOCOL: P.Assigned,
              P.RESULT_PROTOCOL: (P.ResultMsg, P.CommitMsg, P.RevealMsg), P.BLOB_PROTOCOL: P.BlobRequest}
    decoded: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    gossip: Counter[str] = Counter()
    validator = admission.AnnounceValidator(chain_id=chain_id, market=market)
    key = load_or_create_key(Path(key_file))
    async with open_host(key=key, gossip=True) as node:
        for protocol, kinds in expect.items():
            node.serve(protocol, _decoder(protocol, kinds, decoded, rejected))
        for kind in P.KINDS:
            for device in P.DEVICES:
                topic = P.job_topic(kind, device)
                node.gossip.set_validator(topic, _announce_check(validator, topic, gossip))
                await node.gossip.subscribe(topic)
        emit({"event": "ready", "peer_id": str(node.peer_id), "addr": node.addr})

        async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
            return {"event": "state", "decoded": decoded, "rejected": rejected, "gossip": gossip,
                    "frame_rejects": frame_rejects.counts, "gossip_rejected": node.gossip.rejected}

        await command_loop(handle)


def _decoder(protocol: str, kinds: Any, decoded: Counter[str], rejected: Counter[str]) -> Any:
    from marketplace.protocol import Ack, ProtocolError, decode

    async def handler(payload: bytes, peer: object) -> bytes:
        try:
            decode(payload, kinds)
        except ProtocolError as err:
            rejected[protocol] += 1
            return Ack(ok=False, reason=err.reason).encode()
        decoded[protocol] += 1
        return Ack(ok=True).encode()

    return handler


def _announce_check(validator: Any, topic: str, counts: Counter[str]) -> Any:
    from marketplace.protocol import ProtocolError

    def check(data: bytes, forwarder: object) -> bool:
        try:
            validator.check(data, topic)
        except ProtocolError as err:
            counts[err.reason] += 1
            return False
        counts["accepted"] += 1
        return True

    return check


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if sys.argv[1] == "--node":
        trio.run(node_main, sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "--fuzz-target":
        trio.run(fuzz_main, sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
