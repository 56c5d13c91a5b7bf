"""Application-level liveness: ping every connected peer, drop the ones that stop answering.

Why: with py-libp2p 0.8.1 a hung (SIGSTOPped, wedged, partitioned) peer stays "connected" forever, and
gossipsub keeps it in its mesh, so announcements sent its way are lost. Each `interval` seconds `Liveness`
pings every connected peer on `/agora/ping/1` (P2PHost.ping, with `timeout`); a peer that misses `misses`
pings in a row is disconnected (P2PHost.disconnect) and logged. `on_drop(peer)` lets discovery stop
re-dialling it for a while.

    live = Liveness(node)
    nursery.start_soon(live.run)
    live.stats.peers, live.stats.dropped          # for metrics
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from marketplace.errors import P2PError

from .host import P2PHost

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 5.0  # generous: a busy (not hung) node on a loaded machine lags seconds (bench_market.py)
DEFAULT_MISSES = 2


@dataclass
class LivenessStats:
    """Counters for metrics: connected peers at the last round, peers dropped so far, pings sent, missed."""

    peers: int = 0
    dropped: int = 0
    pings: int = 0
    missed: int = 0
    overloaded: int = 0  # missed pings not counted because this node's own event loop was lagging
    last_rtt_ms: dict[str, float] = field(default_factory=dict)


class Liveness:
    """Pings connected peers every `interval` s; disconnects one after `misses` consecutive failed pings."""

    def __init__(self, node: P2PHost, *, interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT,
                 misses: int = DEFAULT_MISSES, on_drop: Callable[[ID], None] | None = None) -> None:
        if interval <= 0 or timeout <= 0 or misses < 1:
            raise ValueError("liveness needs interval > 0, timeout > 0 and misses >= 1")
        self.node = node
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        self.on_drop = on_drop
        self.stats = LivenessStats()
        self._missed: dict[ID, int] = {}

    # trio.TaskStatus exists (trio >= 0.23) but the stale trio-stubs of trio-typing (a libp2p dependency) hide it.
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[name-defined]
        """Ping rounds forever (until cancelled)."""
        task_status.started()
        while True:
            await self.round()
            await trio.sleep(self.interval)

    async def round(self) -> None:
        """One round: ping every connected peer concurrently, then forget peers that are gone."""
        peers = self.node.connected_peers()
        self.stats.peers = len(peers)
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self._check, peer)
        connected = set(self.node.connected_peers())
        for gone in [p for p in self._missed if p not in connected]:
            del self._missed[gone]
        self.stats.peers = len(connected)

    async def _check(self, peer: ID) -> None:
        self.stats.pings += 1
        start = time.monotonic()
        try:
            rtt = await self.node.ping(PeerInfo(peer, []), timeout=self.timeout)
        except P2PError as err:
            if time.monotonic() - start > self.timeout * 1.5:
                # Our own event loop woke up far past the deadline: WE are overloaded, so this miss says
                # nothing about the peer (dropping it would add reconnect churn to the overload).
                self.stats.overloaded += 1
                log.debug("liveness: ignoring a missed ping to %s: this node is lagging", peer)
                return
            self.stats.missed += 1
            count = self._missed.get(peer, 0) + 1
            self._missed[peer] = count
            log.debug("liveness: %s missed a ping (%d/%d): %s", peer, count, self.misses, err)
            if count >= self.misses:
                await self._drop(peer, count, err)
            return
        self._missed.pop(peer, None)
        self.stats.last_rtt_ms[str(peer)] = rtt * 1000

    async def _drop(self, peer: ID, count: int, last: Exception) -> None:
        log.warning("liveness: dropping %s after %d missed pings (last: %s)", peer, count, last)
        self._missed.pop(peer, None)
        self.stats.last_rtt_ms.pop(str(peer), None)
        self.stats.dropped += 1
        if self.on_drop is not None:
            try:
                self.on_drop(peer)
            except Exception:  # noqa: BLE001 - a callback bug must not stop liveness
                log.exception("liveness: on_drop callback failed")
        await self.node.disconnect(peer)
