"""A libp2p host for the provider agent: noise only, yamux, one connection per peer, loopback and port 0.

    async with open_host(key=load_or_create_key(path)) as node:
        node.serve("/agora/echo/1", handler)          # handler(payload: bytes, peer: ID) -> bytes
        reply = await node.request(peer_addr, "/agora/echo/1", b"hi", timeout=5)
        rtt = await node.ping(peer_addr, timeout=2)   # application-level liveness

Each request opens a fresh stream, writes one frame, reads one frame (see `framing`). Everything that can go
wrong is one of `P2PError`'s subclasses; a handler that raises or a peer that sends junk resets only its stream.

Why not `new_host()` defaults: they also offer `/plaintext/2.0.0` (a peer could claim any peer id), secio and
TLS; each connect waits 250 ms unless `max_connections_per_peer=1`; leaving `host.run()` does not close the
connections (so `open_host` closes the host itself); a SIGSTOPped peer stays "connected" forever (hence `ping`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeAlias

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from marketplace.errors import FrameError, P2PError, PeerTimeoutError, PeerUnreachableError, PingMismatchError

from .framing import MAX_FRAME, read_frame, write_frame
from .gossip import Gossip, GossipOptions, build_pubsub

log = logging.getLogger(__name__)

PING_PROTOCOL = "/agora/ping/1"
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
DEFAULT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 3.0

Handler = Callable[[bytes, ID], Awaitable[bytes]]
PeerRef: TypeAlias = PeerInfo | str | multiaddr.Multiaddr


def peer_info(peer: PeerRef) -> PeerInfo:
    """A `PeerInfo` from a full multiaddr (`.../p2p/<id>`, str or Multiaddr) or an existing PeerInfo."""
    if isinstance(peer, PeerInfo):
        return peer
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(str(peer)))
    except Exception as err:  # noqa: BLE001 - multiaddr and libp2p raise several types for bad addresses
        raise P2PError(f"not a peer multiaddr with /p2p/<id>: {peer} ({err})") from None


async def _discard(stream: Any, *, reset: bool) -> None:
    """Close (or reset) a stream without ever blocking for long or raising."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception as err:  # noqa: BLE001 - a stream that is already gone is closed enough
            log.debug("closing a stream failed: %s", err)


class P2PHost:
    """A running host; build it with `open_host`."""

    def __init__(self, host: Any, *, max_frame: int = MAX_FRAME, gossip: Gossip | None = None) -> None:
        self.host = host
        self.max_frame = max_frame
        self._gossip = gossip
        self.serve(PING_PROTOCOL, _pong)

    @property
    def gossip(self) -> Gossip:
        """The host's pub/sub (`open_host(gossip=True)`)."""
        if self._gossip is None:
            raise P2PError("this host was opened without gossip (open_host(gossip=True))")
        return self._gossip

    def connected_peers(self) -> list[ID]:
        return list(self.host.get_connected_peers())

    async def disconnect(self, peer: ID) -> None:
        """Drop every connection to `peer` (a hung or misbehaving peer); never raises."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self.host.disconnect(peer)
            except Exception as err:  # noqa: BLE001 - already gone is disconnected enough
                log.debug("disconnecting %s failed: %s", peer, err)

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def addrs(self) -> list[str]:
        """Listen addresses, each ending in /p2p/<peer id>."""
        return [str(a) for a in self.host.get_addrs()]

    @property
    def addr(self) -> str:
        return self.addrs[0]

    async def connect(self, peer: PeerRef, *, timeout: float = DEFAULT_TIMEOUT) -> ID:
        info = peer_info(peer)
        try:
            with trio.fail_after(timeout):
                await self.host.connect(info)
        except trio.TooSlowError:
            raise PeerTimeoutError(f"connecting to {info.peer_id} took over {timeout} s") from None
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - translated at this boundary
            raise PeerUnreachableError(f"cannot connect to {info.peer_id}: {type(err).__name__}: {err}") from None
        return info.peer_id

    def serve(self, protocol: str, handler: Handler, *, timeout: float = DEFAULT_TIMEOUT,
              max_size: int | None = None) -> None:
        """Answer each stream on `protocol`: read one frame, reply with `await handler(payload, peer_id)`.

        A bad frame, a slow client or a handler that raises resets that stream only (and is logged).
        """
        limit = max_size or self.max_frame

        async def _on_stream(stream: Any) -> None:
            try:
                peer = stream.muxed_conn.peer_id
                payload = await read_frame(stream, max_size=limit, timeout=timeout)
                reply = await handler(payload, peer)
                await write_frame(stream, reply, max_size=limit, timeout=timeout)
            except trio.Cancelled:
                await _discard(stream, reset=True)
                raise
            except FrameError as err:
                log.info("%s: rejected a stream: %s", protocol, err)
                await _discard(stream, reset=True)
            except Exception:
                log.exception("%s: handler failed", protocol)
                await _discard(stream, reset=True)
            else:
                await _discard(stream, reset=False)

        self.host.set_stream_handler(TProtocol(protocol), _on_stream)

    async def open_stream(self, peer: PeerRef, protocol: str) -> Any:
        """A new stream to `peer` on `protocol` (connecting first if needed); no timeout of its own."""
        info = peer_info(peer)
        if info.addrs:
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
        try:
            return await self.host.new_stream(info.peer_id, [TProtocol(protocol)])
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - translated at this boundary
            raise PeerUnreachableError(
                f"cannot open {protocol} to {info.peer_id}: {type(err).__name__}: {err}") from None

    async def request(self, peer: PeerRef, protocol: str, payload: bytes, *, timeout: float = DEFAULT_TIMEOUT,
                      max_size: int | None = None) -> bytes:
        """Send one frame on a fresh stream and return the reply frame, all within `timeout` seconds."""
        limit = max_size or self.max_frame
        if len(payload) > limit:  # refuse before opening anything
            await write_frame(None, payload, max_size=limit)
        info = peer_info(peer)
        stream = None
        ok = False
        try:
            with trio.fail_after(timeout):
                stream = await self.open_stream(info, protocol)
                await write_frame(stream, payload, max_size=limit, timeout=None)
                reply = await read_frame(stream, max_size=limit, timeout=None)
                ok = True
                return reply
        except trio.TooSlowError:
            raise PeerTimeoutError(f"{protocol} to {info.peer_id}: no answer within {timeout} s") from None
        finally:
            if stream is not None:
                await _discard(stream, reset=not ok)

    async def ping(self, peer: PeerRef, *, timeout: float = 5.0) -> float:
        """Round-trip time in seconds of `/agora/ping/1`; `PeerTimeoutError` when the peer is hung."""
        nonce = os.urandom(16)
        start = time.perf_counter()
        reply = await self.request(peer, PING_PROTOCOL, nonce, timeout=timeout)
        if reply != nonce:
            raise PingMismatchError(f"ping to {peer_info(peer).peer_id} answered with other bytes")
        return time.perf_counter() - start


async def _pong(payload: bytes, peer: ID) -> bytes:
    return payload


def build_host(key: KeyPair, listen: list[multiaddr.Multiaddr]) -> Any:
    """The libp2p host: noise as the ONLY security transport, yamux only, one connection per peer."""
    noise = NoiseTransport(key, noise_privkey=create_new_x25519_key_pair().private_key)
    return new_host(
        key_pair=key,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=listen,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


@asynccontextmanager
async def open_host(*, key: KeyPair, listen: str = DEFAULT_LISTEN, max_frame: int = MAX_FRAME,
                    gossip: bool | GossipOptions = False) -> AsyncIterator[P2PHost]:
    """Run a host listening on `listen` (loopback, port 0 by default); close it and its connections on exit.

    `key`: the libp2p key pair (see `identity.load_or_create_key`); `max_frame`: the default frame cap;
    `gossip`: also run gossipsub (True for the defaults, or `GossipOptions`), started before the host listens.
    """
    addrs = [multiaddr.Multiaddr(listen)]
    host = build_host(key, addrs)
    async with AsyncExitStack() as stack:
        wrapper = None
        if gossip:
            options = gossip if isinstance(gossip, GossipOptions) else GossipOptions()
            pubsub, router = build_pubsub(host, options)
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            wrapper = Gossip(pubsub, router, options)
        async with _running(host, addrs, max_frame, wrapper) as node:
            yield node


@asynccontextmanager
async def _running(host: Any, addrs: list[multiaddr.Multiaddr], max_frame: int, gossip: Gossip | None
                   ) -> AsyncIterator[P2PHost]:
    try:
        async with host.run(addrs):
            try:
                yield P2PHost(host, max_frame=max_frame, gossip=gossip)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await host.close()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await host.close()
