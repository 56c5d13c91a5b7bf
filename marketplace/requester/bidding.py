"""Bidding: announce a job on its topic, check every bid as it arrives, rank them when the window closes.

Nothing here touches the chain except reads (chain time, providers' on-chain facts): a job that gets no
acceptable bids costs nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio
from eth_utils import to_checksum_address
from libp2p.peer.id import ID

from marketplace import protocol as P
from marketplace.eip712 import recover_bid_signer
from marketplace.errors import AgoraError, BlobNotFoundError, NoAcceptableBidsError
from marketplace.p2p import PeerRecord, verify_peer_record
from marketplace.requester.core import (
    DEADLINE_SLACK_S,
    EXPIRY_MARGIN_S,
    BidReceived,
    BidWindow,
    RequesterContext,
)
from marketplace.requester.ranking import Explanation, Offer, ProviderFacts, rank
from marketplace.spec import JobSpec
from marketplace.types import SignedBid, from_wei

log = logging.getLogger(__name__)

#: The machine-readable code of each bid refusal (its text says which check failed and by how much).
BID_REJECT_CODES = {
    "malformed": P.RejectCode.MALFORMED, "mismatch": P.RejectCode.UNKNOWN_JOB, "price": P.RejectCode.TERMS,
    "collateral": P.RejectCode.TERMS, "signature": P.RejectCode.SIGNATURE, "record": P.RejectCode.SIGNATURE,
    "expiry": P.RejectCode.TERMS, "deadline": P.RejectCode.TERMS, "duplicate": P.RejectCode.REPLAY,
}


class Bidding:
    """The bid phase of one requester: `choose` announces and ranks; `on_bid` serves /agora/bid/1."""

    def __init__(self, ctx: RequesterContext) -> None:
        self.ctx = ctx

    async def choose(self, *, spec_hash: str, spec_json: bytes, kind: str, device: str, k: int, max_price: int,
                     min_collateral: int, run_seconds: int, window: int, input_bytes: int, bid_window: float,
                     grace: float, peer_wait: float, on_announced: Callable[[str], None] | None = None,
                     out_dir: Path | None = None) -> tuple[BidWindow, Explanation, list[BidReceived]]:
        """Announce a job on its topic, collect bids for the window, rank them: (window, explanation, chosen).
        Raises NoAcceptableBidsError (the job's store row is then "no-bids": nothing was sent to the chain)."""
        ctx = self.ctx
        topic = P.job_topic(kind, device)
        if not await ctx.node.gossip.wait_for_topic_peers(topic, 1, timeout=peer_wait):
            ctx.progress(f"no peer subscribes to {topic} yet; announcing anyway")
        chain_ts = await ctx.chain.next_block_time()
        t0 = time.time()
        ts = int(t0 * 1000)
        ann = P.Announce(chain_id=ctx.chain_id, market=to_checksum_address(ctx.market_address),
                         requester=ctx.address, requester_peer=str(ctx.node.peer_id),
                         requester_addrs=ctx.node.addrs[:8], spec_hash=spec_hash, kind=kind,  # type: ignore[arg-type]
                         device=device, replicas=k, max_price=str(max_price),  # type: ignore[arg-type]
                         min_collateral=str(min_collateral), run_seconds=run_seconds, window=window,
                         input_bytes=input_bytes, ts_ms=ts, bid_until_ms=ts + int(bid_window * 1000),
                         nonce="0x" + os.urandom(16).hex()).signed(ctx.market.client.account)
        ann_id = ann.ann_id
        spec_file = self.keep_spec(spec_hash, spec_json)
        ctx.store.add_job(ann_id=ann_id, announcement=ann.model_dump(mode="json"), spec_hash=spec_hash,
                          spec_path=str(spec_file), k=k, max_price=max_price,
                          out_dir=str(out_dir) if out_dir else None)
        if on_announced is not None:
            on_announced(ann_id)
        pending = BidWindow(ann=ann, k=k, max_price=max_price, min_collateral=min_collateral, chain_ts=chain_ts,
                            wall_ts=t0)
        ctx.windows[ann_id] = pending
        try:
            await ctx.node.gossip.publish(topic, ann.encode())
            ctx.progress(f"announced {kind} job {ann_id[:10]} to {topic}; bids until +{bid_window:g} s")
            await self._collect(pending, grace)
        finally:
            pending.closed = True
            ctx.windows.pop(ann_id, None)
        ctx.store.merge_json(ann_id, "timings", {"bids_closed_s": round(time.time() - t0, 3)})
        explanation, chosen = await self.rank(pending, bid_window)
        ctx.store.update_job(ann_id, explanation=explanation.to_json())
        if not explanation.ok:
            ctx.store.update_job(ann_id, state="no-bids", error=explanation.summary)
            raise NoAcceptableBidsError(explanation)
        return pending, explanation, chosen

    def input_bytes(self, spec: JobSpec) -> int:
        """The total size of the spec's input blobs; raises BlobNotFoundError for one not in the store."""
        total = 0
        for blob in spec.blobs():
            if not self.ctx.blobs.has(blob):
                raise BlobNotFoundError(f"the spec needs blob {blob}, which is not in the store "
                                        f"{self.ctx.blobs.root} (add it with `agora blob add`)")
            total += self.ctx.blobs.path(blob).stat().st_size
        return total

    def keep_spec(self, spec_hash: str, spec_json: bytes) -> Path:
        """The canonical spec beside the database, so `resume` can serve it after a restart."""
        path = self.ctx.store.path.parent / "specs" / f"{spec_hash}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(spec_json)
        return path

    async def _collect(self, pending: BidWindow, grace: float) -> None:
        remaining = pending.ann.bid_until_ms / 1000 - time.time()
        with trio.move_on_after(max(0.0, remaining)):
            await pending.enough.wait()
            await trio.sleep(grace)

    async def on_bid(self, payload: bytes, peer: ID) -> bytes:
        """/agora/bid/1: record the bid with its verdict; the window closes early once k are acceptable."""
        try:
            offer: P.BidOffer = P.decode(payload, P.BidOffer)
        except P.ProtocolError as err:
            return P.Ack.reject(err).encode()
        pending = self.ctx.windows.get(offer.ann)
        if pending is None or pending.closed:
            return P.Ack(ok=False, code=P.RejectCode.UNKNOWN_JOB,
                         reason="unknown announcement or bid window closed").encode()
        signed: SignedBid | None = None
        code: str | None  # None: the bid is acceptable
        try:
            signed = SignedBid.from_json(offer.bid)
        except (KeyError, TypeError, ValueError) as err:
            code, reason = "malformed", f"malformed bid: {err}"
        else:
            code, reason = self.check_bid(pending, offer, signed, str(peer)) or (None, "")
        provider = signed.bid.provider if signed else None
        order = len(pending.received)
        row = self.ctx.store.add_bid(ann_id=pending.ann.ann_id, provider=provider, peer=str(peer),
                                     price=signed.bid.price if signed else None,
                                     collateral=signed.bid.collateral if signed else None,
                                     status="refused" if code else "received", code=code, reason=reason,
                                     offer=offer.model_dump(mode="json"))
        item = Offer(provider=provider or "?", price=signed.bid.price if signed else 0,
                     collateral=signed.bid.collateral if signed else 0, order=order, refusal=code, reason=reason)
        pending.received.append(BidReceived(offer=item, signed=signed, peer=str(peer), bid_row=row))
        if pending.acceptable() >= pending.k:
            pending.enough.set()
        return P.Ack(ok=code is None, code=BID_REJECT_CODES.get(code or ""), reason=reason[:500]).encode()

    def check_bid(self, pending: BidWindow, offer: P.BidOffer, signed: SignedBid,
                  peer: str) -> tuple[str, str] | None:
        """The arrival checks; (code, reason) of the first that fails, or None."""
        ctx = self.ctx
        ann, bid = pending.ann, signed.bid
        if "0x" + bid.spec_hash.hex() != ann.spec_hash.lower() or bid.requester != to_checksum_address(ann.requester):
            return "mismatch", "bid quotes another spec hash or requester than the announcement"
        if bid.price > pending.max_price:
            return "price", f"price {from_wei(bid.price)} exceeds max price {from_wei(pending.max_price)}"
        if bid.collateral < pending.min_collateral:
            return "collateral", (f"collateral {from_wei(bid.collateral)} is below the minimum "
                                  f"{from_wei(pending.min_collateral)}")
        try:
            signer = recover_bid_signer(signed, chain_id=ctx.chain_id, market=ctx.market_address)
        except Exception as err:  # noqa: BLE001 - eth_keys raises several types for junk signatures
            return "signature", f"bad bid signature: {err}"
        if signer != bid.provider:
            return "signature", f"bid for {bid.provider} is signed by {signer}"
        try:
            bound = verify_peer_record(PeerRecord.from_json(offer.record), peer, chain_id=ctx.chain_id)
        except AgoraError as err:
            return "record", f"peer record: {err}"
        if bound != bid.provider:
            return "record", f"peer {peer} is bound to {bound}, not to the bid's provider {bid.provider}"
        close = pending.chain_ts + (ann.bid_until_ms - ann.ts_ms) // 1000 + 1
        if bid.expiry < close + EXPIRY_MARGIN_S:
            return "expiry", f"bid expires at {bid.expiry}, before the job can be opened (~{close})"
        if bid.run_seconds > ann.run_seconds:
            return "deadline", f"bid needs {bid.run_seconds} s, the job gives {ann.run_seconds} s"
        if bid.min_window > ann.window:
            return "deadline", f"bid needs a window of {bid.min_window} s, the job gives {ann.window} s"
        if bid.max_deadline and bid.max_deadline < pending.est_chain_now() + bid.run_seconds + DEADLINE_SLACK_S // 2:
            return "deadline", f"bid's latest deadline {bid.max_deadline} leaves less than its own run time"
        if any(r.offer.provider == bid.provider and r.offer.refusal is None for r in pending.received):
            return "duplicate", f"{bid.provider} already bid on this announcement"
        return None

    async def rank(self, pending: BidWindow, bid_window: float) -> tuple[Explanation, list[BidReceived]]:
        """Rank the window's bids with the providers' on-chain facts; record each bid's status and why."""
        ctx = self.ctx
        providers = sorted({r.offer.provider for r in pending.received if r.offer.refusal is None})
        infos = await ctx.chain.read(
            lambda: {p: ProviderFacts.from_info(ctx.market.provider_info(p)) for p in providers})
        explanation = rank([r.offer for r in pending.received], infos, pending.k, max_price=pending.max_price,
                           min_collateral=pending.min_collateral, window_s=bid_window)
        by_order = {r.offer.order: r for r in pending.received}
        for line in explanation.bids:
            r = by_order[line.order]
            status = "chosen" if line.chosen else ("refused" if line.refusal else "outranked")
            ctx.store.set_bid_status(r.bid_row, status, line.reason)
        chosen = sorted((ln for ln in explanation.bids if ln.chosen), key=lambda ln: ln.rank or 0)
        return explanation, [by_order[ln.order] for ln in chosen]
