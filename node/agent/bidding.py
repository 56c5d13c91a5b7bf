"""Bidding: this node's adverts, the announcements it relays and acts on, and the bids it sends.

    announce (gossip) -> validate_announce (signature, freshness, requester funds) -> announce_loop
        -> consider: Strategy.decide(announce, BidContext) -> Quote | Decline
        -> send_bid: signed Bid (chain times), stored before it leaves, BidOffer to the requester

The strategy (`strategy.py`) never touches the network or the chain; this module gathers what it needs
(free capacity, free stake) and turns its quote into a signed bid.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import trio
from cachetools import TTLCache
from eth_utils import to_checksum_address
from libp2p.peer.id import ID

from marketplace.admission import AdvertValidator, AnnounceValidator
from marketplace.eip712 import sign_bid
from marketplace.errors import AgoraError
from marketplace.p2p import P2PError
from marketplace.p2p.gossip import Subscription
from marketplace.protocol import (
    ADVERT_TOPIC,
    BID_PROTOCOL,
    MAX_ANNOUNCE_BYTES,
    Ack,
    Advert,
    Announce,
    BidOffer,
    ProtocolError,
    decode,
    job_topic,
)
from marketplace.types import Bid, b32

from .context import NodeContext
from .store import BidRow
from .strategy import BidContext, Decline, Strategy

log = logging.getLogger("agora.node")

BID_TIMEOUT_S = 2.0
BID_EXPIRY_S = 120
MAX_DEADLINE_SLACK_S = 60
ADVERT_EVERY_S = 30.0
FUNDS_CACHE_S = 3.0


class Bidder:
    """Adverts, announcement validation, requester-funds checks and bids of one node."""

    def __init__(self, ctx: NodeContext, strategy: Strategy) -> None:
        self.ctx = ctx
        self.strategy = strategy
        self.announces = AnnounceValidator(chain_id=ctx.chain_id, market=ctx.market_address)
        self.adverts = AdvertValidator(chain_id=ctx.chain_id)
        # Chain reads a burst of announcements would repeat: per requester (bounded), and this node's free stake.
        self._funds: TTLCache[str, int] = TTLCache(maxsize=10_000, ttl=FUNDS_CACHE_S)
        self._stake: TTLCache[str, int] = TTLCache(maxsize=1, ttl=FUNDS_CACHE_S)

    async def subscribe(self, nursery: trio.Nursery) -> list[str]:
        """Validate and follow the job topics of this node's kinds and device, and relay adverts."""
        ctx = self.ctx
        assert ctx.device is not None
        host = ctx.net
        topics = []
        for kind in ctx.config.kinds:
            if kind == "collab" and not ctx.client.deployment.collab:
                log.warning("this deployment has no CollabMarket: not taking collab jobs (redeploy to get one)")
                continue
            topic = job_topic(kind, ctx.device.device_class)
            host.gossip.set_validator(topic, functools.partial(self.validate_announce, topic))
            sub = await host.gossip.subscribe(topic)
            nursery.start_soon(self.announce_loop, sub)
            topics.append(topic)
        host.gossip.set_validator(ADVERT_TOPIC, self.validate_advert)
        adverts = await host.gossip.subscribe(ADVERT_TOPIC)
        nursery.start_soon(self._drain, adverts)
        return topics + [ADVERT_TOPIC]

    @staticmethod
    async def _drain(sub: Subscription) -> None:
        """Adverts of other providers: this node relays them (mesh member) but has no use for them."""
        async for _ in sub:
            pass

    # ------------------------------------------------------------------ adverts
    def advert(self) -> Advert:
        ctx = self.ctx
        assert ctx.device is not None and ctx.record is not None
        prices: dict[str, str] = {k: str(ctx.config.price_wei(k)) for k in ctx.config.kinds}
        return Advert(chain_id=ctx.chain_id, provider=ctx.address, peer=str(ctx.net.peer_id),
                      addrs=ctx.net.addrs[:8], record=ctx.record.to_json(), device=ctx.device.name,
                      device_class=ctx.device.device_class, memory_mb=ctx.device.memory_mb,  # type: ignore[arg-type]
                      torch=ctx.device.torch, throughput={"gflops": ctx.device.gflops}, prices=prices,
                      capacity=ctx.config.capacity, ts_ms=int(time.time() * 1000)).signed(ctx.account.key)

    async def advert_loop(self) -> None:
        while True:
            try:
                await self.ctx.net.gossip.publish(ADVERT_TOPIC, self.advert().encode())
            except Exception as err:  # noqa: BLE001 - no peers yet, or a transient pubsub error: try again later
                log.debug("advert not published: %s", err)
            await trio.sleep(ADVERT_EVERY_S)

    def validate_advert(self, data: bytes, forwarder: ID) -> bool:
        try:
            self.adverts.check(data)
            return True
        except ProtocolError as err:
            self.ctx.metrics.rejected.labels(reason=err.reason).inc()
            return False

    # ------------------------------------------------------------------ announcements
    async def validate_announce(self, topic: str, data: bytes, forwarder: ID) -> bool:
        """Gossip validator: what this node relays and acts on. Never raises (a rejection is counted)."""
        try:
            ann = self.announces.check(data, topic)
        except ProtocolError as err:
            self.ctx.metrics.rejected.labels(reason=err.reason).inc()
            log.info("dropped an announcement on %s: %s", topic, err)
            return False
        try:
            funded = await self.requester_funds(ann.requester, collab=ann.kind == "collab") >= \
                int(ann.max_price) * ann.replicas
        except AgoraError as err:
            log.warning("funds check failed: %s", err)
            funded = False
        if not funded:
            self.ctx.metrics.rejected.labels(reason="funds").inc()
            log.info("dropped announcement %s: requester %s cannot pay %s x %d", ann.ann_id[:10], ann.requester,
                     ann.max_price, ann.replicas)
        return funded

    async def requester_funds(self, requester: str, *, collab: bool = False) -> int:
        """market balance + min(token balance, allowance to the market), cached FUNDS_CACHE_S per requester.
        A collab job's escrow comes from the requester's tokens (CollabMarket approves and pulls them when the
        job opens), so for `collab` the token balance is what counts."""
        key = requester.lower() + (":collab" if collab else "")
        hit = self._funds.get(key)
        if hit is not None:
            return hit

        def _read() -> int:
            m = self.ctx.market
            if collab:
                return m.token_balance(requester)
            return m.market_balance(requester) + min(m.token_balance(requester),
                                                     m.allowance(requester, self.ctx.market_address))

        value = int(await self.ctx.io.read(_read))
        self._funds[key] = value
        return value

    async def announce_loop(self, sub: Subscription) -> None:
        async for msg in sub:
            if self.ctx.stopping:
                return
            try:  # already validated by validate_announce; decode once more for the typed message
                ann = decode(msg.data, Announce, max_bytes=MAX_ANNOUNCE_BYTES)
            except ProtocolError:
                continue
            self.ctx.start_soon(self.consider, ann)

    # ------------------------------------------------------------------ bids
    async def free_stake(self) -> int:
        hit = self._stake.get("free")
        if hit is not None:
            return hit
        info = await self.ctx.io.read(self.ctx.market.provider_info, self.ctx.address)
        value = int(info["stake"]) - int(info["locked"]) - int(info["unbonding"])  # as requesters count it
        self._stake["free"] = value
        return value

    async def context(self) -> BidContext:
        ctx = self.ctx
        assert ctx.device is not None
        return BidContext(free_capacity=ctx.config.capacity - ctx.store.active_count(),
                          free_stake=await self.free_stake(), served_kinds=frozenset(ctx.config.kinds),
                          device_class=ctx.device.device_class)

    async def consider(self, ann: Announce) -> None:
        """Offer or decline one valid announcement. Never raises."""
        metrics = self.ctx.metrics
        try:
            decision = self.strategy.decide(ann, await self.context())
            if isinstance(decision, Decline):
                metrics.bids.labels(outcome="declined").inc()
                metrics.declines.labels(reason=decision.reason).inc()
                log.info("declined %s (%s %s): %s", ann.ann_id[:10], ann.kind, ann.device, decision.reason)
                return
            if decision.counter:
                metrics.declines.labels(reason="price").inc()  # declined at their price, countered at ours
                log.info("counter-offer on %s: our price %s > max %s", ann.ann_id[:10], decision.price, ann.max_price)
            collateral = 0 if ann.kind == "collab" else decision.collateral  # CollabMarket takes no collateral
            await self.send_bid(ann, decision.price, collateral, decision.run_seconds, decision.min_window)
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - one bad announcement must not stop the node
            log.warning("bidding on %s failed: %s: %s", ann.ann_id[:10], type(err).__name__, err)

    def make_bid(self, ann: Announce, price: int, collateral: int, run_seconds: int, min_window: int) -> Bid:
        """The bid's times are chain times: wall times from the announcement are shifted by chain - wall."""
        chain_now = self.ctx.chain_now
        offset = chain_now - time.time()
        ann_ts = int(ann.ts_ms / 1000 + offset)
        window = max(0, (ann.bid_until_ms - ann.ts_ms) // 1000)
        return Bid(spec_hash=b32(ann.spec_hash), requester=ann.requester, provider=self.ctx.address, price=price,
                   collateral=collateral, run_seconds=run_seconds, min_window=min_window,
                   max_deadline=ann_ts + window + ann.run_seconds + MAX_DEADLINE_SLACK_S,
                   expiry=chain_now + BID_EXPIRY_S, nonce=int.from_bytes(os.urandom(32), "big"))

    async def send_bid(self, ann: Announce, price: int, collateral: int, run_seconds: int, min_window: int) -> None:
        ctx = self.ctx
        assert ctx.record is not None and ctx.device is not None
        await ctx.refresh_chain_time()
        bid = self.make_bid(ann, price, collateral, run_seconds, min_window)
        signed = sign_bid(ctx.account, bid, chain_id=ctx.chain_id, market=ctx.market_address)
        # BidOffer takes the bid and the record as their JSON dicts too (validated into the models); the pydantic
        # plugin types a strict model's __init__ by field type only.
        offer = BidOffer(ann=ann.ann_id, bid=signed.to_json(), record=ctx.record.to_json(),  # type: ignore[arg-type]
                         eta_s=float(run_seconds), device=ctx.device.name)
        # Recorded before it leaves: a win must be recognised even if the node dies right after sending.
        ctx.store.add_bid(BidRow(nonce=bid.nonce, ann_id=ann.ann_id, spec_hash=ann.spec_hash.lower(),
                                 requester=to_checksum_address(ann.requester), requester_peer=ann.requester_peer,
                                 requester_addrs=list(ann.requester_addrs), kind=ann.kind, price=price,
                                 collateral=collateral, run_seconds=run_seconds, expiry=bid.expiry,
                                 announce=json.loads(ann.encode())))
        try:
            reply = await ctx.request_peer(ann.requester_addrs, ann.requester_peer, BID_PROTOCOL, offer.encode(),
                                           timeout=BID_TIMEOUT_S)
            ack: Ack = decode(reply, Ack)
        except (P2PError, ProtocolError) as err:
            log.warning("bid for %s not delivered: %s", ann.ann_id[:10], err)
            return
        if ack.ok:
            log.info("bid %s tokens for %s (%s) delivered", price / 10**18, ann.ann_id[:10], ann.kind)
        else:
            log.info("bid for %s refused: %s", ann.ann_id[:10], ack.reason)
            ctx.store.set_bid_outcome(bid.nonce, "lost")
            ctx.metrics.bids.labels(outcome="lost").inc()
