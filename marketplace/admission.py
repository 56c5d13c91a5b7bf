"""Admission of gossip: what a node checks before it acts on or relays an announcement or an advert.

Gossipsub's own spam protection is switched off (it throttles a node's own publishes and every relayed sender to
10 messages per second per topic), so these checks replace it: size, schema, chain and market, signature,
freshness against the local clock (`MAX_CLOCK_SKEW_S`), replay of a (requester, nonce) within `REPLAY_TTL_S`, and
a token-bucket rate limit per requester or provider. Every rejection is a `ProtocolError` with a `reason`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from marketplace.errors import AgoraError, ProtocolError
from marketplace.protocol import (
    MAX_ADVERT_BYTES,
    MAX_ANNOUNCE_BYTES,
    MAX_BID_WINDOW_S,
    MAX_CLOCK_SKEW_S,
    REPLAY_TTL_S,
    Advert,
    Announce,
    PeerRecord,
    decode,
    verify_peer_record,
    verify_signed,
)


class RateLimiter:
    """A token bucket per key: `rate` per second, bursts of `burst`. `allow(key)` spends one token."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok


class ReplayCache:
    """Remembers keys for `ttl` seconds; `seen(key)` is True for a key already remembered (and remembers it)."""

    def __init__(self, ttl: float = REPLAY_TTL_S, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 200_000) -> None:
        self.ttl, self.clock, self.max_keys = ttl, clock, max_keys
        self._keys: OrderedDict[str, float] = OrderedDict()

    def seen(self, key: str) -> bool:
        now = self.clock()
        while self._keys:
            k, t = next(iter(self._keys.items()))
            if now - t <= self.ttl and len(self._keys) <= self.max_keys:
                break
            self._keys.popitem(last=False)
        if key in self._keys:
            return True
        self._keys[key] = now
        return False


class AnnounceValidator:
    """Everything a node checks before it acts on or forwards an announcement, except funds (a chain read,
    see `FundsCheck`): size, schema, chain and market, topic, signature, freshness, replay, rate per requester.

    `check(data, topic)` returns the `Announce` or raises ProtocolError with a `reason`.
    """

    def __init__(self, *, chain_id: int, market: str, rate: float = 20.0, burst: int = 40,
                 wall: Callable[[], float] = time.time) -> None:
        self.chain_id, self.market, self.wall = chain_id, market.lower(), wall
        self.rates = RateLimiter(rate, burst)
        self.replays = ReplayCache()

    def check(self, data: bytes, topic: str | None = None) -> Announce:
        ann: Announce = decode(data, Announce, max_bytes=MAX_ANNOUNCE_BYTES)
        if ann.chain_id != self.chain_id or ann.market.lower() != self.market:
            raise ProtocolError(f"announcement for chain {ann.chain_id} market {ann.market}, not ours",
                                reason="chain")
        if topic is not None and topic != ann.topic:
            raise ProtocolError(f"announcement for {ann.topic} published on {topic}", reason="topic")
        if int(ann.max_price) >= 1 << 96 or int(ann.min_collateral) >= 1 << 96:
            raise ProtocolError("price or collateral does not fit uint96")
        now_ms = int(self.wall() * 1000)
        if abs(now_ms - ann.ts_ms) > MAX_CLOCK_SKEW_S * 1000:
            raise ProtocolError(f"stale announcement ({(now_ms - ann.ts_ms) / 1000:.1f} s old)", reason="stale")
        if ann.bid_until_ms < ann.ts_ms or ann.bid_until_ms - ann.ts_ms > MAX_BID_WINDOW_S * 1000:
            raise ProtocolError("bid window out of bounds", reason="malformed")
        if ann.bid_until_ms < now_ms:
            raise ProtocolError("bid window already closed", reason="stale")
        verify_signed(ann, ann.requester)  # before replay/rate: a forged message must not burn a real key's budget
        if self.replays.seen(f"{ann.requester.lower()}:{ann.nonce}"):
            raise ProtocolError("replayed announcement", reason="replay")
        if not self.rates.allow(ann.requester.lower()):
            raise ProtocolError(f"requester {ann.requester} exceeds {self.rates.rate:g} announcements/s",
                                reason="rate")
        return ann


class AdvertValidator:
    """Size, schema, chain, signature, record and freshness of provider adverts, with a rate limit per provider."""

    def __init__(self, *, chain_id: int, rate: float = 1.0, burst: int = 5,
                 wall: Callable[[], float] = time.time) -> None:
        self.chain_id, self.wall = chain_id, wall
        self.rates = RateLimiter(rate, burst)

    def check(self, data: bytes) -> Advert:
        adv: Advert = decode(data, Advert, max_bytes=MAX_ADVERT_BYTES)
        if adv.chain_id != self.chain_id:
            raise ProtocolError(f"advert for chain {adv.chain_id}", reason="chain")
        now_ms = int(self.wall() * 1000)
        if abs(now_ms - adv.ts_ms) > 5 * 60 * 1000:
            raise ProtocolError("stale advert", reason="stale")
        verify_signed(adv, adv.provider)
        try:
            signer = verify_peer_record(PeerRecord.from_json(adv.record), adv.peer, chain_id=self.chain_id)
        except AgoraError as err:
            raise ProtocolError(f"advert peer record: {err}", reason="signature") from None
        if signer.lower() != adv.provider.lower():
            raise ProtocolError("advert peer record is for another address", reason="signature")
        if not self.rates.allow(adv.provider.lower()):
            raise ProtocolError("advert rate exceeded", reason="rate")
        return adv
