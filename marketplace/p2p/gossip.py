"""Gossipsub for the market, with py-libp2p 0.8.1's unsafe defaults replaced.

    async with open_host(key=key, gossip=True) as node:
        node.gossip.set_validator(topic, check)            # check(data, forwarder) -> bool (sync or async)
        sub = await node.gossip.subscribe(topic)
        await node.gossip.publish(topic, payload)          # paced; never silently dropped by our own queue
        async for msg in sub: ...                          # GossipMessage(topic, data, origin, received)

What differs from `Pubsub(host, GossipSub(...))` with py-libp2p 0.8.1's defaults:
- gossipsub's spam protection (10 msg/s per topic per sender, applied to the node's own publishes and to what it
  relays) is off; each topic's validator does the project's own checks, per requester, before anything is
  relayed;
- a validator that raises returns False (logged) instead of taking the node down;
- publishes are paced by a token bucket (`publish_rate` per second), because the router's outbound queues hold 32
  messages and drop the rest silently when a node publishes faster than ~100 msg/s on 2 cores;
- messages are strictly signed by the libp2p key (the origin peer id is authenticated), and each subscription's
  queue is bounded and drops the oldest message with a warning rather than blocking the router;
- the pubsub service starts before the host listens, so a peer that connects early cannot crash it;
- CPU per announcement is cut (measured with scripts/bench_market.py --only gossip; see `GossipOptions` and
  `YAMUX_ENV`): gossipsub v1.1 only (no v1.2 IDONTWANT control RPCs), a mesh degree of 4 instead of 6, and yamux
  returns receive credit once per message instead of after every read.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub

log = logging.getLogger(__name__)

Validator = Callable[[bytes, ID], bool | Awaitable[bool]]


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    data: bytes
    origin: ID  # the peer that published it (its libp2p signature was checked)
    received: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class GossipOptions:
    # Mesh degree: every message reaches a node about once per mesh peer, and each copy costs ~0.5 ms of CPU in
    # py-libp2p (read, decrypt, parse, verify the sender record, drop as seen). 4/3/8 instead of gossipsub's 6/4/12
    # (measured with 20 nodes on 2 cores: meshes of 3-8 peers instead of 7-12; still 3 hops reach all 20), and
    # lazy IHAVE gossip repairs what a thin mesh misses.
    degree: int = 4
    degree_low: int = 3
    degree_high: int = 8
    heartbeat_interval: int = 1
    publish_rate: float = 50.0  # own publishes per second (all topics)
    # bursts overflow the router's 32-message per-peer queues (measured: 1000 at once -> 17 arrive)
    publish_burst: int = 4
    queue_size: int = 1024  # per subscription
    max_message_bytes: int = 64 * 1024
    # gossipsub v1.2 (IDONTWANT): off. Each relayed message then costs one control RPC to and from every mesh peer
    # (py-libp2p sends one RPC per peer per message id, each with a signed peer record the receiver verifies):
    # ~half of the RPCs a node handles, to save duplicates of messages that are only ~1 KB. v1.1 peers interoperate.
    idontwant: bool = False


# py-libp2p 0.8.1's yamux sends a WINDOW_UPDATE frame after every read of a stream (PY_YAMUX_RELEASE_ON_READ, on by
# default); pubsub reads each RPC in several reads (length prefix, body), so every RPC received cost 3 encrypted
# WINDOW_UPDATE frames back. With it off, one per RPC remains (measured: frames per gossiped message among 4 hosts
# 36 -> 18, CPU -16 %); credit is still returned before the sender's window runs out, so flow control is intact.
# yamux reads it from the environment on every read, so this is process-wide; an operator's explicit setting wins.
YAMUX_ENV = "PY_YAMUX_RELEASE_ON_READ"


def build_pubsub(host: Any, options: GossipOptions) -> tuple[Pubsub, GossipSub]:
    """The router and pubsub service for `host` (see the module docstring for what differs from the defaults)."""
    os.environ.setdefault(YAMUX_ENV, "0")
    protocols = [PROTOCOL_ID_V12, PROTOCOL_ID_V11] if options.idontwant else [PROTOCOL_ID_V11]
    router = GossipSub(
        protocols=protocols,
        degree=options.degree, degree_low=options.degree_low, degree_high=options.degree_high,
        heartbeat_interval=options.heartbeat_interval, heartbeat_initial_delay=0.1,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, router, strict_signing=True, max_inbound_rpc_size=options.max_message_bytes * 4,
                    validation_timeout=5.0)
    return pubsub, router


class Subscription:
    """Messages of one topic, in arrival order; iterate with `async for`, or `await get()`."""

    def __init__(self, topic: str, receive: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        self.topic = topic
        self._receive = receive

    async def get(self) -> GossipMessage:
        return await self._receive.receive()

    def __aiter__(self) -> AsyncIterator[GossipMessage]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[GossipMessage]:
        async for msg in self._receive:
            yield msg


class Gossip:
    """The market's pub/sub; built by `open_host(gossip=True)`."""

    def __init__(self, pubsub: Pubsub, router: GossipSub, options: GossipOptions) -> None:
        self.pubsub = pubsub
        self.router = router
        self.options = options
        self._tokens = float(options.publish_burst)
        self._last = time.monotonic()
        self._publish_lock = trio.Lock()
        self._subs: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self.dropped = 0  # messages dropped because a subscriber's queue was full
        self.rejected = 0  # messages a validator refused (or raised on)

    # ------------------------------------------------------------------ validation
    def set_validator(self, topic: str, validator: Validator) -> None:
        """Install `validator(data, forwarder)` for `topic`; it runs before a message is delivered or relayed.

        It may be sync or async; whatever it raises counts as a rejection (never a crash)."""
        is_async = inspect.iscoroutinefunction(validator)
        limit = self.options.max_message_bytes

        def _sync(forwarder: ID, msg: Any) -> bool:
            try:
                if len(msg.data) > limit:
                    return self._reject(topic, "oversized")
                return bool(validator(bytes(msg.data), forwarder)) or self._reject(topic, "refused")
            except Exception as err:  # noqa: BLE001 - a validator must never take the node down
                log.warning("gossip validator for %s raised %s: %s", topic, type(err).__name__, err)
                return self._reject(topic, "raised")

        async def _async(forwarder: ID, msg: Any) -> bool:
            try:
                if len(msg.data) > limit:
                    return self._reject(topic, "oversized")
                ok = await validator(bytes(msg.data), forwarder)  # type: ignore[misc]
                return bool(ok) or self._reject(topic, "refused")
            except trio.Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - a validator must never take the node down
                log.warning("gossip validator for %s raised %s: %s", topic, type(err).__name__, err)
                return self._reject(topic, "raised")

        self.pubsub.set_topic_validator(topic, _async if is_async else _sync, is_async)

    def _reject(self, topic: str, why: str) -> bool:
        self.rejected += 1
        log.debug("gossip: rejected a message on %s (%s)", topic, why)
        return False

    # ------------------------------------------------------------------ subscribe / publish
    async def subscribe(self, topic: str) -> Subscription:
        """Join `topic`; the returned subscription yields each valid message once (our own publishes included)."""
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic}")
        send, receive = trio.open_memory_channel[GossipMessage](self.options.queue_size)
        self._subs[topic] = send
        inner = await self.pubsub.subscribe(topic)
        self._spawn(self._pump(topic, inner, send))
        return Subscription(topic, receive)

    def _spawn(self, coro: Any) -> None:
        self.pubsub.manager.run_task(lambda: coro)

    async def _pump(self, topic: str, inner: Any, send: trio.MemorySendChannel[GossipMessage]) -> None:
        while True:
            try:
                msg = await inner.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            item = GossipMessage(topic=topic, data=bytes(msg.data), origin=ID(msg.from_id),
                                 received=time.monotonic())
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                self.dropped += 1
                log.warning("gossip: subscriber of %s is %d messages behind; dropped one",
                            topic, self.options.queue_size)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return

    async def unsubscribe(self, topic: str) -> None:
        send = self._subs.pop(topic, None)
        if send is not None:
            await send.aclose()
            await self.pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish `data` on `topic`, waiting for a publish token when over `publish_rate`."""
        if len(data) > self.options.max_message_bytes:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {self.options.max_message_bytes}")
        async with self._publish_lock:
            while True:
                now = time.monotonic()
                self._tokens = min(float(self.options.publish_burst),
                                   self._tokens + (now - self._last) * self.options.publish_rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    break
                await trio.sleep((1.0 - self._tokens) / self.options.publish_rate)
        await self.pubsub.publish(topic, data)

    # ------------------------------------------------------------------ introspection
    def topic_peers(self, topic: str) -> list[ID]:
        """Peers known to be subscribed to `topic`."""
        return list(self.pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[ID]:
        return list(self.router.mesh.get(topic, ()))

    async def wait_for_topic_peers(self, topic: str, count: int = 1, *, timeout: float = 10.0) -> bool:
        """Wait until at least `count` peers subscribe to `topic`; False on timeout."""
        with trio.move_on_after(timeout):
            while len(self.topic_peers(topic)) < count:
                await trio.sleep(0.05)
            return True
        return False
