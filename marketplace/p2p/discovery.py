"""Finding and keeping peers: bootstrap addresses, a rendezvous point, a bounded peer set, liveness.

    async with trio.open_nursery() as nursery:
        peers = await nursery.start(maintain_peers, node, ["/ip4/1.2.3.4/tcp/4001/p2p/16Uiu2..."])
        peers.stats.connected, peers.liveness.stats.dropped     # counters for metrics

How: every node dials its bootstrap addresses (per-address exponential backoff, an unreachable one is logged,
never raised), registers itself under `namespace` (default `agora/1`) at each bootstrap that runs a rendezvous
point (libp2p's `/rendezvous/1.0.0`; `agora p2p bootstrap` runs one with `rendezvous_server=True`), asks it
who else registered, and dials a random subset of those until it has `max_peers` connections. The gossip mesh
therefore forms among the nodes themselves, not only through the bootstrap. A liveness loop (`liveness.py`)
drops peers that stop answering pings; a dropped or undialable peer is not re-dialled for a backoff period.

Why rendezvous and not the Kademlia DHT: py-libp2p 0.8.1's rendezvous client and service work over our
noise+yamux host as shipped, need one round trip, and only let a peer register itself (the stream's
authenticated peer id must equal the registered id). The rendezvous point keeps registrations for their TTL
(min 120 s) even after a peer leaves; clients cope (the dial fails fast and is backed off) and the server also
prunes registrations of peers it has been disconnected from for two rounds.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.discovery.rendezvous.client import RendezvousClient
from libp2p.discovery.rendezvous.config import MIN_TTL
from libp2p.discovery.rendezvous.service import RendezvousService
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from marketplace.errors import P2PError

from .host import P2PHost, peer_info
from .liveness import DEFAULT_INTERVAL, DEFAULT_MISSES, DEFAULT_TIMEOUT, Liveness

log = logging.getLogger(__name__)

NAMESPACE = "agora/1"
MAX_PEERS = 8  # gossipsub wants 4-12 mesh peers per topic; more connections only cost pings and CPU
REFRESH_S = 3.0  # how often to re-discover (and top the peer set up)
REGISTER_TTL_S = MIN_TTL  # the shortest TTL the rendezvous point accepts: stale entries vanish soonest
DIAL_TIMEOUT_S = 5.0
RENDEZVOUS_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
DROPPED_BACKOFF_S = 30.0  # a peer dropped by liveness is not re-dialled for this long (then doubling)


class _QuietEOF(logging.Filter):
    """The rendezvous service logs every client that closes its stream as an error with an empty message
    (py-libp2p 0.8.1 reads past the last request); that is the normal end of a request, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Error handling stream from") and text.rstrip().endswith(":"))


logging.getLogger("libp2p.discovery.rendezvous.service").addFilter(_QuietEOF())


def bootstrap_from_env(value: str | None = None) -> list[str]:
    """The bootstrap multiaddrs of `AGORA_BOOTSTRAP` (comma separated), or of `value` when given."""
    text = os.environ.get("AGORA_BOOTSTRAP", "") if value is None else value
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class DiscoveryStats:
    """Counters for metrics and for tests."""

    rounds: int = 0
    connected: int = 0  # peers connected after the last round
    bootstrap_connected: int = 0  # bootstrap peers connected after the last round
    registered: int = 0  # rendezvous points we are registered at
    discovered: int = 0  # distinct peers the rendezvous points named, last round
    dials: int = 0
    dial_failures: int = 0


@dataclass
class _Backoff:
    """Exponential backoff per key (a bootstrap address or a peer id)."""

    initial: float = BACKOFF_MIN_S
    ceiling: float = BACKOFF_MAX_S
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (not before, last delay)

    def ready(self, key: str, now: float) -> bool:
        return self._state.get(key, (0.0, 0.0))[0] <= now

    def failed(self, key: str, now: float, *, at_least: float = 0.0) -> float:
        delay = min(self.ceiling, max(at_least, self.initial, self._state.get(key, (0.0, 0.0))[1] * 2))
        self._state[key] = (now + delay * random.uniform(0.8, 1.2), delay)
        return delay

    def succeeded(self, key: str) -> None:
        self._state.pop(key, None)


class PeerMaintainer:
    """The state behind `maintain_peers`; `maintain_peers` hands it to `nursery.start`'s caller."""

    def __init__(self, node: P2PHost, bootstrap: Sequence[str], *, namespace: str = NAMESPACE,
                 rendezvous_server: bool = False, max_peers: int = MAX_PEERS, refresh: float = REFRESH_S,
                 ping_interval: float = DEFAULT_INTERVAL, ping_timeout: float = DEFAULT_TIMEOUT,
                 ping_misses: int = DEFAULT_MISSES) -> None:
        self.node = node
        self.namespace = namespace
        self.max_peers = max_peers
        self.refresh = refresh
        self.bootstrap: list[PeerInfo] = []
        for addr in bootstrap:
            try:
                self.bootstrap.append(peer_info(addr))
            except P2PError as err:  # one bad address must not stop the node; it is logged and skipped
                log.warning("discovery: skipping bootstrap address: %s", err)
        self.bootstrap = [b for b in self.bootstrap if b.peer_id != node.peer_id]
        self.stats = DiscoveryStats()
        self.service: RendezvousService | None = RendezvousService(node.host) if rendezvous_server else None
        self.liveness = Liveness(node, interval=ping_interval, timeout=ping_timeout, misses=ping_misses,
                                 on_drop=self._dropped)
        self._boot_backoff = _Backoff()
        self._peer_backoff = _Backoff()
        self._registered_until: dict[ID, float] = {}  # rendezvous point -> when to register again
        self._not_rendezvous: _Backoff = _Backoff(initial=5.0, ceiling=5 * BACKOFF_MAX_S)  # failed or absent
        self._absent: dict[ID, int] = {}  # (server) registered peers not connected, for how many rounds

    # ------------------------------------------------------------------ running
    # trio.TaskStatus exists (trio >= 0.23) but the stale trio-stubs of trio-typing (a libp2p dependency) hide it.
    async def run(self, *, task_status: trio.TaskStatus[PeerMaintainer] = trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[name-defined]
        await self._stop_auto_connector()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.liveness.run)
            await self.round()
            task_status.started(self)
            while True:
                await trio.sleep(self.refresh * random.uniform(0.8, 1.2))
                await self.round()

    async def _stop_auto_connector(self) -> None:
        """py-libp2p 0.8.1's swarm runs an AutoConnector that dials every peer of the peerstore until it has
        ~200 connections: that would ignore `max_peers` and re-dial peers liveness just dropped. This class
        owns the peer set, so that connector is stopped."""
        connector = getattr(self.node.host.get_network(), "auto_connector", None)
        if connector is not None:
            try:
                await connector.stop()
            except Exception as err:  # noqa: BLE001 - an older/newer libp2p without it: nothing to stop
                log.debug("discovery: could not stop libp2p's auto-connector: %s", err)

    async def round(self) -> None:
        """Dial bootstraps that are due, register and discover at rendezvous points, top the peer set up."""
        await self._dial_bootstraps()
        candidates = await self._rendezvous()
        await self._dial_some(candidates)
        if self.service is not None:
            self._prune_registrations()
        connected = set(self.node.connected_peers())
        self.stats.connected = len(connected)
        self.stats.bootstrap_connected = sum(1 for b in self.bootstrap if b.peer_id in connected)
        self.stats.rounds += 1

    # ------------------------------------------------------------------ bootstrap
    async def _dial_bootstraps(self) -> None:
        connected = set(self.node.connected_peers())
        now = time.monotonic()
        due = [b for b in self.bootstrap
               if b.peer_id not in connected and self._boot_backoff.ready(str(b.peer_id), now)]
        async with trio.open_nursery() as nursery:
            for info in due:
                nursery.start_soon(self._dial_bootstrap, info)

    async def _dial_bootstrap(self, info: PeerInfo) -> None:
        key = str(info.peer_id)
        try:
            await self.node.connect(info, timeout=DIAL_TIMEOUT_S)
        except P2PError as err:
            delay = self._boot_backoff.failed(key, time.monotonic())
            log.warning("discovery: bootstrap %s unreachable (retry in %.0f s): %s", key, delay, err)
            return
        self._boot_backoff.succeeded(key)
        self._registered_until.pop(info.peer_id, None)  # (re)register at once after a reconnect
        log.info("discovery: connected to bootstrap %s", key)

    # ------------------------------------------------------------------ rendezvous
    async def _rendezvous(self) -> list[PeerInfo]:
        connected = set(self.node.connected_peers())
        found: dict[ID, PeerInfo] = {}
        now = time.monotonic()
        for boot in self.bootstrap:
            key = str(boot.peer_id)
            if boot.peer_id not in connected or not self._not_rendezvous.ready(key, now):
                continue
            try:
                peers = await self._register_and_discover(boot.peer_id)
            except Exception as err:  # noqa: BLE001 - rendezvous raises many types; a failure is only logged
                delay = self._not_rendezvous.failed(key, time.monotonic())
                self._registered_until.pop(boot.peer_id, None)
                log.info("discovery: rendezvous at %s failed (retry in %.0f s): %s: %s",
                         key, delay, type(err).__name__, err)
                continue
            self._not_rendezvous.succeeded(key)
            for p in peers:
                found.setdefault(p.peer_id, p)
        self.stats.registered = sum(1 for t in self._registered_until.values() if t > time.monotonic())
        self.stats.discovered = len(found)
        return list(found.values())

    async def _register_and_discover(self, point: ID) -> list[PeerInfo]:
        client = RendezvousClient(self.node.host, point, enable_refresh=False)
        with trio.fail_after(RENDEZVOUS_TIMEOUT_S * 2):
            if self._registered_until.get(point, 0.0) <= time.monotonic():
                ttl = await client.register(self.namespace, ttl=REGISTER_TTL_S)
                self._registered_until[point] = time.monotonic() + max(1.0, ttl / 2)
            peers, _cookie = await client.discover(self.namespace, limit=max(64, self.max_peers * 4))
        return peers

    def _prune_registrations(self) -> None:
        """(Rendezvous server) forget registrations of peers we have been disconnected from for two rounds."""
        assert self.service is not None
        regs = self.service.registrations.get(self.namespace, {})
        connected = set(self.node.connected_peers())
        for peer in list(regs):
            if peer in connected:
                self._absent.pop(peer, None)
                continue
            self._absent[peer] = self._absent.get(peer, 0) + 1
            if self._absent[peer] >= 2:
                regs.pop(peer, None)
                self._absent.pop(peer, None)
                log.info("discovery: pruned the registration of %s (gone)", peer)

    # ------------------------------------------------------------------ peers
    async def _dial_some(self, candidates: list[PeerInfo]) -> None:
        connected = set(self.node.connected_peers())
        room = self.max_peers - len(connected)
        if room <= 0:
            return
        now = time.monotonic()
        fresh = [c for c in candidates if c.peer_id != self.node.peer_id and c.peer_id not in connected
                 and c.addrs and self._peer_backoff.ready(str(c.peer_id), now)]
        random.shuffle(fresh)
        async with trio.open_nursery() as nursery:
            for info in fresh[:room]:
                nursery.start_soon(self._dial_peer, info)

    async def _dial_peer(self, info: PeerInfo) -> None:
        self.stats.dials += 1
        try:
            await self.node.connect(PeerInfo(info.peer_id, [_strip_p2p(a) for a in info.addrs]),
                                    timeout=DIAL_TIMEOUT_S)
        except P2PError as err:
            self.stats.dial_failures += 1
            delay = self._peer_backoff.failed(str(info.peer_id), time.monotonic())
            log.info("discovery: cannot dial %s (retry in %.0f s): %s", info.peer_id, delay, err)
            return
        self._peer_backoff.succeeded(str(info.peer_id))
        log.info("discovery: connected to %s", info.peer_id)

    def _dropped(self, peer: ID) -> None:
        """Liveness dropped `peer`: do not dial it again for a while (it is probably hung, not gone)."""
        self._peer_backoff.failed(str(peer), time.monotonic(), at_least=DROPPED_BACKOFF_S)
        self._boot_backoff.failed(str(peer), time.monotonic(), at_least=BACKOFF_MIN_S)


def _strip_p2p(addr: Any) -> Any:
    """`/ip4/../tcp/../p2p/<id>` -> `/ip4/../tcp/..` (the peerstore wants transport addresses)."""
    try:
        return addr.decapsulate_code(0x01A5) if "/p2p/" in str(addr) else addr  # 0x01a5 = p2p
    except Exception:  # noqa: BLE001 - keep the address as it is when multiaddr cannot split it
        return addr


async def maintain_peers(node: P2PHost, bootstrap: Sequence[str], *, namespace: str = NAMESPACE,
                         rendezvous_server: bool = False, max_peers: int = MAX_PEERS,
                         refresh: float = REFRESH_S, ping_interval: float = DEFAULT_INTERVAL,
                         ping_timeout: float = DEFAULT_TIMEOUT,
                         ping_misses: int = DEFAULT_MISSES,
                         # trio.TaskStatus: see PeerMaintainer.run
                         task_status: trio.TaskStatus[PeerMaintainer] = trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[name-defined]
    """Keep `node` connected to the market until cancelled; `task_status.started(maintainer)` after round one.

    `bootstrap`: full multiaddrs (`.../p2p/<id>`); unreachable or malformed ones are logged and retried with
    backoff, never raised. `rendezvous_server`: also serve a rendezvous point (the bootstrap node does).
    `max_peers`: stop dialling discovered peers at this many connections (inbound ones are not refused).
    """
    maintainer = PeerMaintainer(node, bootstrap, namespace=namespace, rendezvous_server=rendezvous_server,
                                max_peers=max_peers, refresh=refresh, ping_interval=ping_interval,
                                ping_timeout=ping_timeout, ping_misses=ping_misses)
    await maintainer.run(task_status=task_status)
