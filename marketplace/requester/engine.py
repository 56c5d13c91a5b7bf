"""The requester engine: announce a job, collect and rank bids, open it on chain, serve its inputs, collect
and verify results, settle. Trio throughout; web3 runs in worker threads (`trio.to_thread`), and one
`trio.Lock` serializes this account's transactions (the client assigns nonces).

One `Requester` owns one libp2p host and serves every job it opened, so many jobs may run concurrently:

    async with Requester.open(market, store=..., blobs=..., key=..., bootstrap=[...]) as req:
        outcome = await req.submit(spec, k=1, max_price=to_wei(1), wait=True, out_dir=Path("out"))

See docs/market-protocol.md for the message flow this implements and docs/requester.md for the user's view.
"""

from __future__ import annotations

import contextlib

import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_utils import to_checksum_address
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from marketplace import protocol as P
from marketplace.collab.protocol import COLLAB_PROTOCOL
from marketplace.blobs import BlobStore
from marketplace.eip712 import COMMIT_TYPES, recover_bid_signer, typed_digest
from marketplace.errors import AgoraError, BlobNotFoundError, InsufficientFundsError, TransactionRevertedError
from marketplace.market import Market
from marketplace.p2p import P2PError, PeerRecord, open_host, verify_peer_record
from marketplace.requester.ranking import Explanation, Offer, ProviderFacts, rank
from marketplace.requester.store import RequesterStore
from marketplace.results import MANIFEST_FILE, OUTPUTS_FILE, ResultManifest
from marketplace.spec import JobSpec
from marketplace.types import JobParams, SignedBid, b32, commitment_for, from_wei, job_id_for

log = logging.getLogger(__name__)

SETTLE_MARGIN_S = 2  # chain seconds past a deadline before the requester finalizes itself
ASSIGN_TIMEOUT_S = 15  # the most submit waits for winners to acknowledge Assigned
POLL_S = 0.5  # how often the requester's one chain poller reads new market logs and the latest block
WATCH_S = 5.0  # a job's watcher re-reads its job at least this often, and at once when the poller pokes it
RUN_SLACK_S = 30  # added to the spec's wall_seconds for the default run_seconds
EXPIRY_MARGIN_S = 15  # a bid must stay valid this long after the window closes
DEADLINE_SLACK_S = 10  # deadline = open time + run_seconds + this (blocks mine after the time we read)


class NoAcceptableBidsError(AgoraError):
    """Fewer acceptable bids than replicas: nothing was sent to the chain. `explanation` says why."""

    def __init__(self, explanation: Explanation) -> None:
        super().__init__(explanation.summary)
        self.explanation = explanation


class JobFailedError(AgoraError):
    """A job could not be opened or did not settle with a result."""


@dataclass
class SubmitOutcome:
    """What `Requester.submit` did. `state` is the store's job state (open, settled, no-bids, failed)."""

    ann_id: str
    state: str
    explanation: Explanation
    job_id: str | None = None
    winners: list[dict[str, Any]] = field(default_factory=list)
    out_dir: str | None = None
    settlement: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("open", "committed", "revealed", "settled")

    def to_json(self) -> dict[str, Any]:
        return {"annId": self.ann_id, "jobId": self.job_id, "state": self.state, "winners": self.winners,
                "explanation": self.explanation.to_json(), "outDir": self.out_dir, "settlement": self.settlement,
                "error": self.error}


@dataclass
class _Received:
    offer: Offer
    signed: SignedBid | None
    peer: str
    bid_row: int


@dataclass
class _Pending:
    """A job in its bid window."""

    ann: P.Announce
    k: int
    max_price: int
    min_collateral: int
    chain_ts: int  # chain time when announced
    wall_ts: float
    received: list[_Received] = field(default_factory=list)
    enough: trio.Event = field(default_factory=trio.Event)
    closed: bool = False

    def est_chain_now(self) -> int:
        return self.chain_ts + int(time.time() - self.wall_ts)

    def acceptable(self) -> int:
        return sum(1 for r in self.received if r.offer.refusal is None)


@dataclass
class _Winner:
    index: int
    provider: str
    peer: str
    price: int
    collateral: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "provider": self.provider, "peer": self.peer, "price": str(self.price),
                "collateral": str(self.collateral)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Winner:
        return cls(index=int(d["index"]), provider=d["provider"], peer=d["peer"], price=int(d["price"]),
                   collateral=int(d["collateral"]))


@dataclass
class _Active:
    """An opened job this requester serves until it settles."""

    ann_id: str
    job_id: bytes
    spec: JobSpec
    spec_json: bytes
    k: int
    deadline: int
    window: int
    winners: list[_Winner]
    out_dir: Path
    t0: float  # wall time of the announcement (timings are relative to it)
    settled: trio.Event = field(default_factory=trio.Event)
    poke: trio.Event = field(default_factory=trio.Event)  # set when our own transaction changed the job
    lock: trio.Lock = field(default_factory=trio.Lock)
    cache: dict[str, bytes] = field(default_factory=dict)
    commits: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    commits_posted: bool = False
    reveals: dict[int, tuple[int, bytes, bytes]] = field(default_factory=dict)
    reveal_refs: dict[int, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    reveals_posted: set[int] = field(default_factory=set)
    result_fetched: bool = False
    outcome: str | None = None
    error: str | None = None

    @property
    def hex_id(self) -> str:
        return "0x" + self.job_id.hex()

    def winner_by_peer(self, peer: str) -> _Winner | None:
        return next((w for w in self.winners if w.peer == peer), None)


class Requester:
    """A requester bound to one account, one host and one store; build it with `Requester.open`."""

    def __init__(self, market: Market, *, store: RequesterStore, blobs: BlobStore, node: Any,
                 nursery: trio.Nursery, progress: Callable[[str], None] | None = None) -> None:
        self.market = market
        self.store = store
        self.blobs = blobs
        self.node = node
        self.nursery = nursery
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.chain_id = market.client.chain_id
        self.market_address = market.client.deployment.market
        self.address = market.address
        self.tx_lock = trio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._active: dict[str, _Active] = {}
        # Jobs run by another engine over this host (collaborative training): job id -> an object with
        # `serve_blob(peer, blob) -> bytes` (raises AgoraError), `served(n_bytes)` and
        # `async on_message(payload, peer) -> bytes`.
        self.extensions: dict[str, Any] = {}

    # ------------------------------------------------------------------ life cycle
    @classmethod
    @asynccontextmanager
    async def open(cls, market: Market, *, store: RequesterStore, blobs: BlobStore, key: Any,
                   bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                   progress: Callable[[str], None] | None = None) -> AsyncIterator[Requester]:
        """Start the host (gossip on), serve the market protocols, join the network through `bootstrap`."""
        async with open_host(key=key, listen=listen, gossip=True) as node, trio.open_nursery() as nursery:
            req = cls(market, store=store, blobs=blobs, node=node, nursery=nursery, progress=progress)
            node.serve(P.BID_PROTOCOL, req._on_bid)
            node.serve(P.BLOB_PROTOCOL, req._on_blob)
            node.serve(P.RESULT_PROTOCOL, req._on_result)
            node.serve(COLLAB_PROTOCOL, req._on_collab)
            nursery.start_soon(req._poll_chain)
            await req._join(list(bootstrap))
            try:
                yield req
            finally:
                nursery.cancel_scope.cancel()

    async def _poll_chain(self) -> None:
        """ONE reader for every open job: each POLL_S, the market's new logs (one eth_getLogs) poke the watchers of
        the jobs they name, and a job near or past a deadline is poked every round (time alone changes what its
        watcher must do). Per-job polling instead costs 3 RPCs per job per round and starves the event loop of a
        requester with many jobs in flight."""
        market = self.market.client.market
        w3 = self.market.client.w3
        last: int | None = None
        while True:
            try:
                if self._active:
                    def read(since: int | None) -> tuple[int, int, list[Any]]:
                        block = w3.eth.get_block("latest")
                        number = int(block["number"])
                        logs = [] if since is None or number <= since else w3.eth.get_logs(
                            {"address": market.address, "fromBlock": since + 1, "toBlock": number})
                        return number, int(block["timestamp"]), logs

                    number, now, logs = await trio.to_thread.run_sync(read, last)
                    touched = {("0x" + bytes(lg["topics"][1]).hex()).lower() for lg in logs if len(lg["topics"]) > 1}
                    last = number if last is None else max(last, number)
                    for job_id, active in list(self._active.items()):
                        if active.settled.is_set():
                            continue
                        if job_id in touched or now >= active.deadline - SETTLE_MARGIN_S:
                            active.poke.set()
                else:
                    last = None  # nothing to watch: start from the head again next time
            except trio.Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - an RPC hiccup must not stop the requester
                log.warning("chain poll failed: %s: %s", type(err).__name__, err)
            await trio.sleep(POLL_S)

    async def _join(self, bootstrap: list[str]) -> None:
        if not bootstrap:
            return
        try:
            from marketplace.p2p.discovery import maintain_peers  # written concurrently with this module
        except ImportError:
            maintain_peers = None
        if maintain_peers is not None:
            await self.nursery.start(maintain_peers, self.node, bootstrap)
            return
        for addr in bootstrap:  # no discovery module: dial the bootstrap peers directly
            try:
                await self.node.connect(addr, timeout=5)
            except P2PError as err:
                self.progress(f"bootstrap {addr}: {err}")

    def chain_now(self) -> int:
        """The timestamp the next block will have, as well as the node can tell: an idle dev chain's latest
        block can be minutes old, and openJob checks deadlines against the block that includes it."""
        w3 = self.market.client.w3
        latest = int(w3.eth.get_block("latest")["timestamp"])
        try:
            return max(latest, int(w3.eth.get_block("pending")["timestamp"]))
        except Exception:  # noqa: BLE001 - some nodes do not serve a pending block
            return latest

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def _send(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One transaction of this account at a time; retried once when another process of the same account
        used our cached nonce (the client re-reads it after the failure)."""
        async with self.tx_lock:
            try:
                return await trio.to_thread.run_sync(functools.partial(fn, *args))
            except AgoraError as err:
                if "nonce too low" not in str(err):
                    raise
                return await trio.to_thread.run_sync(functools.partial(fn, *args))

    # ------------------------------------------------------------------ funds
    async def ensure_funds(self, need: int, *, approve: bool) -> None:
        """market balance + min(token balance, allowance) >= need, approving the shortfall with `approve`."""
        me, mk = self.address, self.market_address
        mbal, tbal, allow = await self._read(lambda: (self.market.market_balance(me), self.market.token_balance(me),
                                                      self.market.allowance(me, mk)))
        if mbal + min(tbal, allow) >= need:
            return
        if mbal + tbal < need:
            raise InsufficientFundsError(
                f"job needs {from_wei(need)} AGORA (max price x replicas): market balance {from_wei(mbal)} + "
                f"token balance {from_wei(tbal)} is {from_wei(need - mbal - tbal)} short")
        if not approve:
            raise InsufficientFundsError(
                f"job needs {from_wei(need)} AGORA (max price x replicas): market balance {from_wei(mbal)}, "
                f"allowance to the market {from_wei(allow)}; approve {from_wei(need - mbal)} with --approve")
        await self._send(self.market.ensure_allowance, mk, need - mbal)

    # ------------------------------------------------------------------ submit
    async def submit(self, spec: JobSpec, *, k: int, max_price: int, min_collateral: int = 0,
                     bid_window: float = 2.0, grace: float = 0.05, run_seconds: int | None = None,
                     window: int | None = None, approve: bool = False, wait: bool = True,
                     out_dir: Path | None = None, peer_wait: float = 15.0,
                     on_announced: Callable[[str], None] | None = None) -> SubmitOutcome:
        """Announce `spec`, pick k bids, open the job; with `wait`, also until it settles and outputs are in
        `out_dir`. `on_announced(ann_id)` runs once the job is in the store and before anything is published or
        sent (a pipeline records the id there, so a crash at any later point resumes this job instead of
        paying for a second one). Raises NoAcceptableBidsError (nothing sent to the chain),
        InsufficientFundsError, BlobNotFoundError, JobFailedError."""
        spec_json = spec.canonical_json()
        spec_hash = "0x" + spec.spec_hash().hex()
        input_bytes = self._check_blobs(spec)
        min_run, _max_run, min_window, _max_window = await self._read(
            lambda: self.market.client.market.functions.bounds().call())
        run_s = run_seconds or max(int(spec.limits.wall_seconds) + RUN_SLACK_S, int(min_run) + 5)
        win = window or max(60, int(min_window))
        await self.ensure_funds(max_price * k, approve=approve)
        out = Path(out_dir) if out_dir else None
        pending, explanation, chosen = await self.choose(
            spec_hash=spec_hash, spec_json=spec_json, kind=spec.kind, device=spec.device.type, k=k,
            max_price=max_price, min_collateral=min_collateral, run_seconds=run_s, window=win,
            input_bytes=input_bytes, bid_window=bid_window, grace=grace, peer_wait=peer_wait,
            on_announced=on_announced, out_dir=out)
        ann_id, t0 = pending.ann.ann_id, pending.wall_ts
        active = await self._open(pending, chosen, spec, spec_json, out, t0)
        outcome = SubmitOutcome(ann_id=ann_id, state="open", explanation=explanation, job_id=active.hex_id,
                                winners=[w.to_json() for w in active.winners], out_dir=str(active.out_dir))
        if wait:
            outcome.settlement = await self.wait(active)
            row = self.store.job(ann_id)
            outcome.state = row.state if row else "failed"
            outcome.error = active.error
        return outcome

    async def choose(self, *, spec_hash: str, spec_json: bytes, kind: str, device: str, k: int, max_price: int,
                     min_collateral: int, run_seconds: int, window: int, input_bytes: int, bid_window: float,
                     grace: float, peer_wait: float, on_announced: Callable[[str], None] | None = None,
                     out_dir: Path | None = None) -> tuple[_Pending, Explanation, list[_Received]]:
        """Announce a job on its topic, collect bids for the window, rank them: (pending, explanation, chosen).
        Shared by single jobs (`submit`) and collaborative training (marketplace.collab.coordinator). Raises
        NoAcceptableBidsError (the job's store row is then "no-bids": nothing was sent to the chain)."""
        topic = P.job_topic(kind, device)
        if not await self.node.gossip.wait_for_topic_peers(topic, 1, timeout=peer_wait):
            self.progress(f"no peer subscribes to {topic} yet; announcing anyway")
        chain_ts = await self._read(self.chain_now)
        t0 = time.time()
        ts = int(t0 * 1000)
        ann = P.Announce(chain_id=self.chain_id, market=to_checksum_address(self.market_address),
                         requester=self.address, requester_peer=str(self.node.peer_id),
                         requester_addrs=self.node.addrs[:8], spec_hash=spec_hash, kind=kind,  # type: ignore[arg-type]
                         device=device, replicas=k, max_price=str(max_price),  # type: ignore[arg-type]
                         min_collateral=str(min_collateral), run_seconds=run_seconds, window=window,
                         input_bytes=input_bytes, ts_ms=ts, bid_until_ms=ts + int(bid_window * 1000),
                         nonce="0x" + os.urandom(16).hex()).signed(self.market.client.account)
        ann_id = ann.ann_id
        spec_file = self._keep_spec(spec_hash, spec_json)
        self.store.add_job(ann_id=ann_id, announcement=ann.model_dump(mode="json"), spec_hash=spec_hash,
                           spec_path=str(spec_file), k=k, max_price=max_price,
                           out_dir=str(out_dir) if out_dir else None)
        if on_announced is not None:
            on_announced(ann_id)
        pending = _Pending(ann=ann, k=k, max_price=max_price, min_collateral=min_collateral, chain_ts=chain_ts,
                           wall_ts=t0)
        self._pending[ann_id] = pending
        try:
            await self.node.gossip.publish(topic, ann.encode())
            self.progress(f"announced {kind} job {ann_id[:10]} to {topic}; bids until +{bid_window:g} s")
            await self._collect(pending, grace)
        finally:
            pending.closed = True
            self._pending.pop(ann_id, None)
        self.store.merge_json(ann_id, "timings", {"bids_closed_s": round(time.time() - t0, 3)})
        explanation, chosen = await self._rank(pending, bid_window)
        self.store.update_job(ann_id, explanation=explanation.to_json())
        if not explanation.ok:
            self.store.update_job(ann_id, state="no-bids", error=explanation.summary)
            raise NoAcceptableBidsError(explanation)
        return pending, explanation, chosen

    def _check_blobs(self, spec: JobSpec) -> int:
        total = 0
        for blob in spec.blobs():
            if not self.blobs.has(blob):
                raise BlobNotFoundError(f"the spec needs blob {blob}, which is not in the store {self.blobs.root} "
                                        f"(add it with `agora blob add`)")
            total += self.blobs.path(blob).stat().st_size
        return total

    def _keep_spec(self, spec_hash: str, spec_json: bytes) -> Path:
        """The canonical spec beside the database, so `resume` can serve it after a restart."""
        path = self.store.path.parent / "specs" / f"{spec_hash}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(spec_json)
        return path

    async def _collect(self, pending: _Pending, grace: float) -> None:
        remaining = pending.ann.bid_until_ms / 1000 - time.time()
        with trio.move_on_after(max(0.0, remaining)):
            await pending.enough.wait()
            await trio.sleep(grace)

    # ------------------------------------------------------------------ bids
    async def _on_bid(self, payload: bytes, peer: ID) -> bytes:
        try:
            offer: P.BidOffer = P.decode(payload, P.BidOffer)
        except P.ProtocolError as err:
            return P.Ack(ok=False, reason=str(err)[:500]).encode()
        pending = self._pending.get(offer.ann)
        if pending is None or pending.closed:
            return P.Ack(ok=False, reason="unknown announcement or bid window closed").encode()
        signed: SignedBid | None = None
        try:
            signed = SignedBid.from_json(offer.bid)
        except (KeyError, TypeError, ValueError) as err:
            code, reason = "malformed", f"malformed bid: {err}"
        else:
            code, reason = self._check_bid(pending, offer, signed, str(peer)) or (None, "")
        provider = signed.bid.provider if signed else None
        order = len(pending.received)
        row = self.store.add_bid(ann_id=pending.ann.ann_id, provider=provider, peer=str(peer),
                                 price=signed.bid.price if signed else None,
                                 collateral=signed.bid.collateral if signed else None,
                                 status="refused" if code else "received", code=code, reason=reason,
                                 offer=offer.model_dump(mode="json"))
        item = Offer(provider=provider or "?", price=signed.bid.price if signed else 0,
                     collateral=signed.bid.collateral if signed else 0, order=order, refusal=code, reason=reason)
        pending.received.append(_Received(offer=item, signed=signed, peer=str(peer), bid_row=row))
        if pending.acceptable() >= pending.k:
            pending.enough.set()
        return P.Ack(ok=code is None, reason=reason[:500]).encode()

    def _check_bid(self, pending: _Pending, offer: P.BidOffer, signed: SignedBid, peer: str) -> tuple[str, str] | None:
        """The arrival checks; (code, reason) of the first that fails, or None."""
        ann, bid = pending.ann, signed.bid
        if "0x" + bid.spec_hash.hex() != ann.spec_hash.lower() or bid.requester != to_checksum_address(ann.requester):
            return "mismatch", "bid quotes another spec hash or requester than the announcement"
        if bid.price > pending.max_price:
            return "price", f"price {from_wei(bid.price)} exceeds max price {from_wei(pending.max_price)}"
        if bid.collateral < pending.min_collateral:
            return "collateral", (f"collateral {from_wei(bid.collateral)} is below the minimum "
                                  f"{from_wei(pending.min_collateral)}")
        try:
            signer = recover_bid_signer(signed, chain_id=self.chain_id, market=self.market_address)
        except Exception as err:  # noqa: BLE001 - eth_keys raises several types for junk signatures
            return "signature", f"bad bid signature: {err}"
        if signer != bid.provider:
            return "signature", f"bid for {bid.provider} is signed by {signer}"
        try:
            bound = verify_peer_record(PeerRecord.from_json(offer.record), peer, chain_id=self.chain_id)
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

    async def _rank(self, pending: _Pending, bid_window: float) -> tuple[Explanation, list[_Received]]:
        providers = sorted({r.offer.provider for r in pending.received if r.offer.refusal is None})
        infos = await self._read(lambda: {p: ProviderFacts.from_info(self.market.provider_info(p)) for p in providers})
        explanation = rank([r.offer for r in pending.received], infos, pending.k, max_price=pending.max_price,
                           min_collateral=pending.min_collateral, window_s=bid_window)
        by_order = {r.offer.order: r for r in pending.received}
        for line in explanation.bids:
            r = by_order[line.order]
            status = "chosen" if line.chosen else ("refused" if line.refusal else "outranked")
            self.store.set_bid_status(r.bid_row, status, line.reason)
        chosen = sorted((ln for ln in explanation.bids if ln.chosen), key=lambda ln: ln.rank or 0)
        return explanation, [by_order[ln.order] for ln in chosen]

    # ------------------------------------------------------------------ open and assign
    async def _open(self, pending: _Pending, chosen: list[_Received], spec: JobSpec, spec_json: bytes,
                    out: Path | None, t0: float) -> _Active:
        ann = pending.ann
        bids = [r.signed for r in chosen if r.signed is not None]
        now = await self._read(self.chain_now)
        # The block that includes openJob is later than `now`: the deadline keeps slack over each runSeconds.
        deadline = now + ann.run_seconds + DEADLINE_SLACK_S
        caps = [b.bid.max_deadline for b in bids if b.bid.max_deadline]
        if caps and min(caps) < deadline:
            deadline = max(min(caps), now + max(b.bid.run_seconds for b in bids) + DEADLINE_SLACK_S // 2)
        params = JobParams(spec_hash=b32(ann.spec_hash), salt=os.urandom(32), deadline=deadline,
                           window=ann.window, replicas=pending.k, budget=0)
        t_open = time.time()
        attempt = await self._record_attempt(ann.ann_id, params)
        # "opening": from here a crash may leave a job open on chain that the store does not know yet;
        # `recover_opened` finds it again from the JobOpened log whose id is keccak(us, this salt, its block).
        self.store.update_job(ann.ann_id, state="opening")
        try:
            job_id, tx = await self._send(self._send_open, ann.ann_id, params, bids, attempt)
        except (TransactionRevertedError, InsufficientFundsError) as err:
            # Definite: reverted in simulation, refused by the node, or mined and reverted. Nothing opened.
            self.store.update_job(ann.ann_id, state="failed", error=f"open job: {err}")
            raise JobFailedError(f"opening the job failed: {err}") from None
        except Exception as err:  # noqa: BLE001 - no receipt, RPC gone: the transaction may still be mined
            raise self._open_uncertain(ann.ann_id, attempt, err) from None
        hex_id = "0x" + job_id.hex()
        winners = [_Winner(index=i, provider=r.signed.bid.provider, peer=r.peer, price=r.signed.bid.price,  # type: ignore[union-attr]
                           collateral=r.signed.bid.collateral) for i, r in enumerate(chosen)]
        out_dir = out or Path.cwd() / f"result-{hex_id[2:10]}"
        self.store.update_job(ann.ann_id, job_id=hex_id, state="open", winners=[w.to_json() for w in winners],
                              out_dir=str(out_dir))
        self.store.merge_json(ann.ann_id, "timings", {"open_tx_s": round(time.time() - t_open, 3),
                                                      "opened_s": round(time.time() - t0, 3)})
        self.store.merge_json(ann.ann_id, "gas", {"open": tx.gas_used})
        active = _Active(ann_id=ann.ann_id, job_id=job_id, spec=spec, spec_json=spec_json, k=pending.k,
                         deadline=deadline, window=ann.window, winners=winners, out_dir=out_dir, t0=t0)
        self._active[hex_id] = active
        self.progress(f"opened job {hex_id} (gas {tx.gas_used:,}); winners "
                      + ", ".join(f"{w.provider} at {from_wei(w.price)}" for w in winners))
        self.nursery.start_soon(self._watch, active)
        # Tell every winner before returning (a submit without --wait exits right after); bounded, since a
        # provider that misses Assigned still finds its assignment on chain.
        with trio.move_on_after(ASSIGN_TIMEOUT_S):
            async with trio.open_nursery() as tell:
                for w in winners:
                    msg = P.Assigned(ann=ann.ann_id, job_id=hex_id, index=w.index, block=tx.block, tx=tx.tx_hash)
                    tell.start_soon(self._assign, w, msg)
        return active

    async def _record_attempt(self, ann_id: str, params: JobParams) -> dict[str, Any]:
        """Record, before the row says "opening", what tells this openJob's job from any other: the block it
        cannot be mined before and the salt (job id = keccak(requester, salt, block)). Without them a recovery
        could adopt an older job of the same spec. Nothing is sent yet, so a failure here fails the row."""
        try:
            block = await self._read(lambda: int(self.market.client.w3.eth.block_number))
        except Exception as err:  # noqa: BLE001 - any RPC failure: nothing was sent
            self.store.update_job(ann_id, state="failed", error=f"open job: reading the chain: {_one_line(err)}")
            raise JobFailedError(f"opening the job failed before anything was sent: {_one_line(err)}") from None
        attempt: dict[str, Any] = {"from_block": block, "salt": "0x" + params.salt.hex()}
        self.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        return attempt

    def _send_open(self, ann_id: str, params: JobParams, bids: list[SignedBid],
                   attempt: dict[str, Any]) -> tuple[bytes, Any]:
        """openJob, with the nonce it is signed with recorded first (a worker thread under `tx_lock`): the nonce
        is how `recover_opened` tells a transaction still pending from one replaced or dropped."""
        attempt["nonce"] = self.market.client.next_nonce()  # the nonce transact() will sign
        self.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        return self.market.open_job(params, bids)

    def _open_uncertain(self, ann_id: str, attempt: dict[str, Any], err: BaseException) -> JobFailedError:
        """openJob failed without a definite revert. If it never reached signing, the row fails (nothing
        sent); otherwise it stays "opening" with the transaction hash when known, for `recover_opened`."""
        what = _one_line(err)
        if "nonce" not in attempt:
            self.store.update_job(ann_id, state="failed", error=f"open job: {what}")
            return JobFailedError(f"opening the job failed before openJob was sent: {what}")
        tx = getattr(err, "tx_hash", None) or _tx_hash_in(what)
        if tx:
            attempt["tx"] = tx
            self.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        self.store.update_job(ann_id, error=f"open job: {what}")
        return JobFailedError(f"openJob {tx or '(hash unknown)'} has no receipt ({what}): the job may still open; "
                              f"`agora job resume` (or rerunning the pipeline) will find it")

    async def _assign(self, w: Any, msg: Any) -> bool:
        """Tell a winner (anything with `peer` and `provider`) its assignment (`Assigned`, or `CollabAssigned`)
        on /agora/assign/1, three tries; True when it acknowledged. A provider that misses a job's Assigned
        still finds the assignment on chain (JobAssigned)."""
        for attempt in range(3):
            try:
                reply = P.decode(await self.node.request(_info(w.peer), P.ASSIGN_PROTOCOL, msg.encode(), timeout=10),
                                 P.Ack)
                if not reply.ok:
                    self.progress(f"provider {w.provider} refused assignment: {reply.reason}")
                return bool(reply.ok)
            except (P2PError, P.ProtocolError) as err:
                self.progress(f"assign to {w.provider} (try {attempt + 1}): {err}")
                await trio.sleep(1 + attempt)
        return False

    def _nudge_winners(self, active: _Active) -> None:
        """Hint every winner that the job changed on chain, so it reveals without waiting for its next poll."""
        msg = P.Nudge(job_id=active.hex_id).encode()

        async def one(w: _Winner) -> None:
            with contextlib.suppress(P2PError, P.ProtocolError):
                await self.node.request(_info(w.peer), P.ASSIGN_PROTOCOL, msg, timeout=2)

        for w in active.winners:
            self.nursery.start_soon(one, w)

    # ------------------------------------------------------------------ blobs
    async def _on_blob(self, payload: bytes, peer: ID) -> bytes:
        try:
            req: P.BlobRequest = P.decode(payload, P.BlobRequest)
        except P.ProtocolError as err:
            return P.blob_reply_err(str(err))
        active = self._active.get(req.job_id.lower())
        ext = self.extensions.get(req.job_id.lower())
        if ext is None and (active is None or active.winner_by_peer(str(peer)) is None):
            return P.blob_reply_err("not a provider of this job")
        try:
            data = ext.serve_blob(str(peer), req.blob) if ext is not None else self._blob_bytes(active, req.blob)
        except AgoraError as err:
            return P.blob_reply_err(str(err))
        if req.offset > len(data):
            return P.blob_reply_err("offset past the end")
        chunk = data[req.offset:req.offset + req.length]
        if ext is not None:
            ext.served(len(chunk))
        return P.blob_reply_ok(len(data), chunk)

    async def _on_collab(self, payload: bytes, peer: ID) -> bytes:
        """Messages of jobs run by an extension (collaborative training), routed by their `job_id`."""
        try:
            job_id = str(json.loads(payload).get("job_id", "")).lower()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return P.Ack(ok=False, reason="not a JSON object").encode()
        ext = self.extensions.get(job_id)
        if ext is None:
            return P.Ack(ok=False, reason="unknown job").encode()
        return await ext.on_message(payload, str(peer))

    def _blob_bytes(self, active: _Active, blob: str) -> bytes:
        if blob in active.cache:
            return active.cache[blob]
        if blob.startswith("spec:"):
            if blob[5:] != "0x" + active.spec.spec_hash().hex():
                raise AgoraError("not this job's spec")
            data = active.spec_json
        elif blob in active.spec.blobs():
            data = self.blobs.get_bytes(blob)
        else:
            raise AgoraError("not an input of this job")
        active.cache[blob] = data
        return data

    async def _fetch(self, peer: str, job_id: str, blob: str, limit: int) -> bytes:
        """A blob from a provider, capped at `limit` bytes and sha256-checked (see protocol.fetch_blob)."""
        async def request(payload: bytes) -> bytes:
            return await self.node.request(_info(peer), P.BLOB_PROTOCOL, payload, timeout=30)

        return await P.fetch_blob(request, job_id=job_id, blob=blob, limit=limit)

    async def _fetch_outputs(self, active: _Active, peer: str, outputs: list[dict[str, Any]], expect: str) -> None:
        """Fetch outputs + manifest into a staging folder, verify them against `expect`, then move them in."""
        from marketplace.results import verify_result_dir

        limit = active.spec.limits.output_mb * 1024 * 1024
        stage = active.out_dir / f".incoming-{os.getpid()}-{peer[-8:]}"
        stage.mkdir(parents=True, exist_ok=True)
        try:
            for ref in outputs:
                data = await self._fetch(peer, active.hex_id, ref["blob"], limit)
                (stage / ref["name"]).write_bytes(data)
            manifest = ResultManifest.read(stage)
            if (manifest.result_hash or "").lower() != expect.lower():
                raise AgoraError(f"manifest result hash {manifest.result_hash} is not {expect}")
            h = await trio.to_thread.run_sync(verify_result_dir, stage)
            if h.hex.lower() != expect.lower():
                raise AgoraError(f"outputs hash to {h.hex}, not {expect}")
            for name in (OUTPUTS_FILE, MANIFEST_FILE):
                os.replace(stage / name, active.out_dir / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    # ------------------------------------------------------------------ results
    async def _on_result(self, payload: bytes, peer: ID) -> bytes:
        try:
            msg = P.decode(payload, (P.ResultMsg, P.CommitMsg, P.RevealMsg))
        except P.ProtocolError as err:
            return P.Ack(ok=False, reason=str(err)[:500]).encode()
        active = self._active.get(msg.job_id.lower())
        winner = active.winner_by_peer(str(peer)) if active else None
        if active is None or winner is None:
            return P.Ack(ok=False, reason="not a provider of a job this requester serves").encode()
        if not self._has_timing(active, "first_result_s"):
            self.store.merge_json(active.ann_id, "timings", {"first_result_s": round(time.time() - active.t0, 3)})
        if isinstance(msg, P.ResultMsg):
            if active.k != 1:
                return P.Ack(ok=False, reason="this job uses commit-reveal").encode()
            self.store.add_result(active.hex_id, msg.result, msg.sig.model_dump(), [o.model_dump() for o in msg.outputs],
                                  str(peer), "received")
            self.nursery.start_soon(self._accept, active, msg, str(peer))
            return P.Ack(ok=True).encode()
        if isinstance(msg, P.CommitMsg):
            reason = self._take_commit(active, msg, winner)
        else:
            reason = await self._take_reveal(active, msg, winner, str(peer))
        return P.Ack(ok=reason is None, reason=reason or "").encode()

    def _has_timing(self, active: _Active, key: str) -> bool:
        row = self.store.job(active.ann_id)
        return bool(row and key in row.timings)

    async def _accept(self, active: _Active, msg: P.ResultMsg, peer: str) -> None:
        """k = 1: verify the outputs, then pay with the provider's signed result in one transaction."""
        async with active.lock:
            if active.settled.is_set() or active.result_fetched:
                return
            try:
                await self._fetch_outputs(active, peer, [o.model_dump() for o in msg.outputs], msg.result)
            except (AgoraError, P2PError, OSError) as err:
                active.error = f"result of {active.winners[0].provider} rejected: {err}"
                self.store.add_result(active.hex_id, msg.result, msg.sig.model_dump(),
                                      [o.model_dump() for o in msg.outputs], peer, "rejected", str(err))
                self.progress(active.error + " (the chain fallback applies: dispute within the window)")
                return
            active.result_fetched = True
            try:
                tx = await self._send(self.market.accept_signed_result, active.job_id, b32(msg.result),
                                      msg.sig.as_tuple())
            except AgoraError as err:
                self.progress(f"acceptSignedResult failed: {err}; the job settles by the chain fallback")
                return
            active.poke.set()
            self.store.merge_json(active.ann_id, "gas", {"accept": tx.gas_used})
            self.progress(f"accepted result {msg.result[:10]} of job {active.hex_id[:10]} (gas {tx.gas_used:,})")

    def _take_commit(self, active: _Active, msg: P.CommitMsg, winner: _Winner) -> str | None:
        if msg.index != winner.index:
            return f"you are participant {winner.index}, not {msg.index}"
        digest = typed_digest(COMMIT_TYPES, {"jobId": active.job_id, "index": msg.index,
                                             "commitment": b32(msg.commitment)},
                              chain_id=self.chain_id, market=self.market_address)
        from eth_account import Account

        v, r, s = msg.sig.as_tuple()
        try:
            signer = Account._recover_hash(digest, vrs=(v, int.from_bytes(r, "big"), int.from_bytes(s, "big")))
        except Exception:  # noqa: BLE001
            return "bad commit signature"
        if signer != winner.provider:
            return f"commit signed by {signer}, not participant {winner.index}"
        active.commits[msg.index] = (msg.index, b32(msg.commitment), v, r, s)
        self.store.add_commit(active.hex_id, msg.index, msg.commitment, msg.sig.model_dump())
        if len(active.commits) == active.k and not active.commits_posted:
            self.nursery.start_soon(self._post_commits, active)
        return None

    async def _post_commits(self, active: _Active) -> None:
        async with active.lock:
            if active.commits_posted or not active.commits:
                return
            view = await self._read(self.market.job, active.job_id)
            fresh = [c for i, c in sorted(active.commits.items()) if not view.committed_mask >> i & 1]
            active.commits_posted = len(active.commits) == active.k
            if not fresh:
                return
            try:
                tx = await self._send(self.market.commit_batch, active.job_id, fresh)
            except AgoraError as err:
                self.progress(f"commitBatch failed: {err}")
                active.commits_posted = False
                return
            self.store.mark_posted("commits", active.hex_id, [c[0] for c in fresh])
            self._nudge_winners(active)
            self.store.merge_json(active.ann_id, "gas", {"commit_batch": tx.gas_used})
            self.store.update_job(active.ann_id, state="committed")
            self.progress(f"posted {len(fresh)} commitment(s) of job {active.hex_id[:10]} (gas {tx.gas_used:,})")

    async def _take_reveal(self, active: _Active, msg: P.RevealMsg, winner: _Winner, peer: str) -> str | None:
        if msg.index != winner.index:
            return f"you are participant {winner.index}, not {msg.index}"
        view = await self._read(self.market.job, active.job_id)
        onchain = view.commitments.get(msg.index)
        if onchain is None:
            return "no commitment of yours is on chain yet"
        if commitment_for(active.job_id, winner.provider, b32(msg.result), b32(msg.salt)) != bytes(onchain):
            return "the reveal does not open your commitment"
        active.reveals[msg.index] = (msg.index, b32(msg.result), b32(msg.salt))
        active.reveal_refs[msg.index] = (msg.result, [o.model_dump() for o in msg.outputs])
        self.store.add_reveal(active.hex_id, msg.index, msg.result, msg.salt, [o.model_dump() for o in msg.outputs],
                              peer)
        committed = {i for i in range(active.k) if view.committed_mask >> i & 1}
        if committed <= set(active.reveals):
            self.nursery.start_soon(self._post_reveals, active)
        return None

    async def _post_reveals(self, active: _Active) -> None:
        async with active.lock:
            view = await self._read(self.market.job, active.job_id)
            if view.settled:
                return
            fresh = [r for i, r in sorted(active.reveals.items()) if not view.revealed_mask >> i & 1]
            if not fresh:
                return
            try:
                tx = await self._send(self.market.reveal_batch, active.job_id, fresh)
            except AgoraError as err:
                self.progress(f"revealBatch failed: {err}")
                return
            self.store.mark_posted("reveals", active.hex_id, [r[0] for r in fresh])
            active.poke.set()
            self.store.merge_json(active.ann_id, "gas", {"reveal_batch": tx.gas_used})
            self.store.update_job(active.ann_id, state="revealed")
            self.progress(f"posted {len(fresh)} reveal(s) of job {active.hex_id[:10]} (gas {tx.gas_used:,})")

    # ------------------------------------------------------------------ watching and settling
    async def _watch(self, active: _Active) -> None:
        """Poll the chain until the job settles: post late batches, finalize past deadlines, fetch outputs."""
        while not active.settled.is_set():
            try:
                # The latest block's time, not chain_now(): finalize is simulated against the latest block.
                view, now = await self._read(lambda: (self.market.job(active.job_id), self.market.client.timestamp()))
                if view.settled:
                    await self._settled(active, view)
                    return
                await self._nudge(active, view, now)
            except AgoraError as err:
                self.progress(f"job {active.hex_id[:10]}: {err}")
            with trio.move_on_after(WATCH_S):  # or when poked: our own transaction, a log of this job, a deadline
                await active.poke.wait()
            active.poke = trio.Event()

    async def _nudge(self, active: _Active, view: Any, now: int) -> None:
        job = view.job
        end = job.deadline + (job.window if active.k > 1 else 0)
        if job.challenge_end:
            end = max(end, job.challenge_end)
        if active.k > 1 and active.commits and not active.commits_posted and now >= job.deadline - SETTLE_MARGIN_S:
            await self._post_commits(active)
        if active.k > 1 and active.reveals and now >= end - active.window // 2:
            await self._post_reveals(active)
        if now > end + SETTLE_MARGIN_S:
            try:
                tx = await self._send(self.market.finalize, active.job_id)
            except AgoraError as err:
                self.progress(f"finalize of {active.hex_id[:10]} failed: {err}")
                return
            self.store.merge_json(active.ann_id, "gas", {"finalize": tx.gas_used})
            self.progress(f"finalized job {active.hex_id[:10]} past its deadline (gas {tx.gas_used:,})")

    async def _settled(self, active: _Active, view: Any) -> None:
        outcome = view.outcome.name.lower() if view.outcome is not None else "unknown"
        result = "0x" + bytes(view.settlement.get("result", b"\x00" * 32)).hex()
        active.outcome = outcome
        if outcome == "completed" and not active.result_fetched:
            # A crash after the outputs were moved in (before the state was) must not depend on the provider
            # still serving them: outputs already in place that verify against the settled result count.
            active.result_fetched = await trio.to_thread.run_sync(_outputs_in_place, active.out_dir, result)
        if outcome == "completed" and not active.result_fetched:
            await self._fetch_settled(active, result)
        timings = {"settled_s": round(time.time() - active.t0, 3)}
        self.store.merge_json(active.ann_id, "timings", timings)
        ok = outcome == "completed" and active.result_fetched
        if outcome != "completed":
            active.error = active.error or f"job settled as {outcome}"
        elif not active.result_fetched:
            active.error = active.error or "job settled but its outputs could not be fetched"
        # settlement.json first, the state second: a crash between leaves a row that `resume` settles again
        # (rewriting the file), never a "settled" row whose file a pipeline then cannot find.
        self._write_settlement(active, view, result)
        self.store.update_job(active.ann_id, state="settled" if ok else "failed", error=active.error)
        self.progress(f"job {active.hex_id[:10]} settled: {outcome}" + (f" ({active.error})" if active.error else ""))
        active.settled.set()

    async def _fetch_settled(self, active: _Active, result: str) -> None:
        """Fetch the outputs from a provider whose result won (k = 1: the worker)."""
        sources: list[tuple[str, list[dict[str, Any]]]] = []
        for i, (res, refs) in sorted(active.reveal_refs.items()):
            if res.lower() == result.lower():
                sources.append((active.winners[i].peer, refs))
        if not sources:
            for i, row in sorted(self.store.reveals(active.hex_id).items()):
                if row["result"].lower() == result.lower():
                    sources.append((row["peer"], row["outputs"]))
        stored = self.store.result(active.hex_id)
        if stored and stored["result"].lower() == result.lower():
            sources.append((stored["peer"], stored["outputs"]))
        for peer, refs in sources:
            try:
                await self._fetch_outputs(active, peer, refs, result)
                active.result_fetched = True
                return
            except (AgoraError, P2PError, OSError) as err:
                active.error = f"fetching outputs from {peer}: {err}"

    def _write_settlement(self, active: _Active, view: Any, result: str) -> None:
        row = self.store.job(active.ann_id)
        s = view.settlement or {}
        doc = {"jobId": active.hex_id, "annId": active.ann_id, "outcome": active.outcome, "result": result,
               "winners": [w.to_json() for w in active.winners],
               "paidMask": s.get("paidMask"), "slashedMask": s.get("slashedMask"),
               "refund": str(s.get("refund", 0)), "compensation": str(s.get("compensation", 0)),
               "gas": row.gas if row else {}, "timings": row.timings if row else {},
               "outputsVerified": active.result_fetched, "error": active.error}
        active.out_dir.mkdir(parents=True, exist_ok=True)
        # Atomically (temp file, fsync, rename): a crash mid-write must not leave a truncated settlement.json.
        path = active.out_dir / "settlement.json"
        tmp = path.with_name(f".settlement.json.{os.getpid()}.tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def wait(self, active: _Active | str, *, timeout: float | None = None) -> dict[str, Any]:
        """Until the job settles (or `timeout` s); returns its settlement.json content."""
        a = self._active[active.lower()] if isinstance(active, str) else active
        with trio.fail_after(timeout) if timeout else _null():
            await a.settled.wait()
        return json.loads((a.out_dir / "settlement.json").read_text())

    # ------------------------------------------------------------------ resume
    async def resume_job(self, ann_id: str) -> _Active | None:
        """Serve and watch a stored, opened, unsettled job again (after a restart)."""
        row = self.store.job(ann_id)
        if row is None or row.job_id is None or row.state in ("settled", "no-bids"):
            return None
        if row.job_id in self._active:
            return self._active[row.job_id]
        active = await trio.to_thread.run_sync(self._load_active, row)
        self._active[row.job_id] = active
        self.nursery.start_soon(self._watch, active)
        return active

    def recover_opened(self, row: Any) -> str | None:
        """A job left in "opening" (a crash, or no receipt, between sending openJob and recording its id): ask
        the chain (`opening_facts`) and act on `opening_verdict`. Adopted: the row becomes "open" with its job id
        and winners, and the id is returned. Proven never opened: the row becomes "failed" (nothing was paid).
        Otherwise (openJob may still be mined) the row stays "opening" with the reason in `error`. Returns None
        in both of the last cases (re-read the row). Runs in a worker thread."""
        facts, log_entry = self.opening_facts(row)
        verdict, detail = opening_verdict(facts)
        if verdict == "failed":
            self.store.update_job(row.ann_id, state="failed", error=detail)
            return None
        if verdict == "opening":
            self.store.update_job(row.ann_id, error=detail)
            self.progress(f"announcement {row.ann_id[:10]}: {detail}")
            return None
        assert log_entry is not None
        return self._adopt(row, log_entry)

    def opening_facts(self, row: Any) -> tuple[OpeningFacts, Any]:
        """What the chain says about a row in "opening": (facts, the JobOpened log proven to be this attempt's
        or None). The nonces are read before the logs, so a transaction mined in between is seen in the logs."""
        w3 = self.market.client.w3
        attempt = dict(row.timings.get(OPEN_ATTEMPT) or {})
        me = to_checksum_address(self.address)
        latest = int(w3.eth.get_transaction_count(me, "latest"))
        pending = int(w3.eth.get_transaction_count(me, "pending"))
        tx = attempt.get("tx")
        status, tx_pending = None, False
        if tx:
            from web3.exceptions import TransactionNotFound

            try:
                status = int(w3.eth.get_transaction_receipt(tx)["status"])
            except TransactionNotFound:
                try:
                    tx_pending = w3.eth.get_transaction(tx)["blockNumber"] is None
                except TransactionNotFound:
                    tx_pending = False
        start = int(attempt.get("from_block", self.market.client.deployment.block))
        event = self.market.client.market.events.JobOpened()
        logs = event.get_logs(from_block=start, argument_filters={"requester": me})
        entry = next((lg for lg in logs if self._is_attempt_of(row, attempt, lg)), None)
        facts = OpeningFacts(matched="0x" + bytes(entry["args"]["jobId"]).hex() if entry else None,
                             attempt="salt" in attempt, nonce=attempt.get("nonce"), tx=tx, receipt_status=status,
                             tx_pending=tx_pending, latest_nonce=latest, pending_nonce=pending)
        return facts, entry

    def _is_attempt_of(self, row: Any, attempt: dict[str, Any], lg: Any) -> bool:
        """Whether a JobOpened log is the job this row's openJob opened. With the recorded salt: exactly, since
        its id is keccak(requester, salt, block). A row recorded before salts were kept: same spec hash, a job
        no other row knows, and the winners are bids this announcement chose (provider and price)."""
        args = lg["args"]
        job_id = bytes(args["jobId"])
        if "salt" in attempt:
            return job_id_for(self.address, b32(attempt["salt"]), int(lg["blockNumber"])) == job_id
        if "0x" + bytes(args["specHash"]).hex() != row.spec_hash.lower():
            return False
        if any(r.job_id == "0x" + job_id.hex() for r in self.store.jobs() if r.job_id):
            return False
        chosen = {((b["provider"] or "").lower(), str(b["price"])) for b in self.store.bids(row.ann_id)
                  if b["status"] == "chosen"}
        return all((a["provider"].lower(), str(int(a["price"]))) in chosen for a in args["workers"])

    def _adopt(self, row: Any, lg: Any) -> str:
        """Record a recovered job in its row, with its winners (peers from the bids received), as "open"."""
        args = lg["args"]
        hex_id = "0x" + bytes(args["jobId"]).hex()
        peers = {(b["provider"] or "").lower(): b["peer"] for b in self.store.bids(row.ann_id)}
        winners = [_Winner(index=i, provider=a["provider"], peer=peers.get(a["provider"].lower(), ""),
                           price=int(a["price"]), collateral=int(a["collateral"]))
                   for i, a in enumerate(args["workers"])]
        out_dir = row.out_dir or str(Path.cwd() / f"result-{hex_id[2:10]}")
        with contextlib.suppress(Exception):  # the gas figure is a nicety; the job is recovered without it
            receipt = self.market.client.w3.eth.get_transaction_receipt(lg["transactionHash"])
            self.store.merge_json(row.ann_id, "gas", {"open": int(receipt["gasUsed"])})
        self.store.update_job(row.ann_id, job_id=hex_id, state="open", winners=[w.to_json() for w in winners],
                              out_dir=out_dir, error=None)
        self.progress(f"announcement {row.ann_id[:10]}: recovered job {hex_id} from its JobOpened log")
        return hex_id

    def _load_active(self, row: Any) -> _Active:
        """Rebuild a job's in-memory state from the store and the chain (runs in a worker thread)."""
        from marketplace.spec import parse_spec

        spec_json = Path(row.spec_path or "").read_bytes()
        spec = parse_spec(json.loads(spec_json), source=row.spec_path or "spec")
        ann = row.announcement
        view = self.market.job(b32(row.job_id))
        job = view.job
        active = _Active(ann_id=row.ann_id, job_id=b32(row.job_id), spec=spec, spec_json=spec_json, k=row.k,
                         deadline=job.deadline if job else 0, window=int(ann["window"]),
                         winners=[_Winner.from_json(w) for w in row.winners],
                         out_dir=Path(row.out_dir or f"result-{row.job_id[2:10]}"), t0=row.created_at)
        for i, c in self.store.commits(row.job_id).items():
            sig = c["sig"]
            active.commits[i] = (i, b32(c["commitment"]), int(sig["v"]), b32(sig["r"]), b32(sig["s"]))
        active.commits_posted = len(active.commits) == active.k and all(
            view.committed_mask >> i & 1 for i in active.commits)
        for i, r in self.store.reveals(row.job_id).items():
            active.reveals[i] = (i, b32(r["result"]), b32(r["salt"]))
            active.reveal_refs[i] = (r["result"], r["outputs"])
        return active

    async def withdraw_refunds(self) -> int:
        """Withdraw the whole market balance (refunds, compensation); 0 when there is none."""
        bal = await self._read(self.market.market_balance, self.address)
        if bal:
            await self._send(self.market.withdraw, bal)
        return int(bal)


#: Key in a job row's `timings` of its openJob attempt: from_block, salt (written before "opening"), nonce
#: (before signing), tx (when known after a failure). `recover_opened` reads it.
OPEN_ATTEMPT = "open_attempt"


@dataclass(frozen=True)
class OpeningFacts:
    """What the chain says about a row left in "opening" (gathered by `Requester.opening_facts`)."""

    matched: str | None = None  # id of the JobOpened proven to be this attempt's
    attempt: bool = False  # the attempt (from_block, salt) was recorded: rows written by this version
    nonce: int | None = None  # the nonce openJob was signed with; None: it never reached signing
    tx: str | None = None  # openJob's hash, when a failure revealed it
    receipt_status: int | None = None  # its receipt's status, when mined
    tx_pending: bool = False  # the node holds it, unmined
    latest_nonce: int = 0  # the account's mined transaction count
    pending_nonce: int = 0  # ... counting its transactions waiting in the node's pool


def opening_verdict(f: OpeningFacts) -> tuple[str, str]:
    """("adopt" | "failed" | "opening", why). "failed" only when the chain proves openJob can never open a job
    (reverted, never sent, its nonce used by another transaction, or dropped with nothing pending): a failed row
    is what lets a pipeline announce again, and a wrong one pays twice. Anything else that is not a match stays
    "opening"."""
    if f.matched:
        return "adopt", f"openJob opened job {f.matched}"
    tx = f.tx or "openJob"
    if f.receipt_status == 0:
        return "failed", f"{tx} reverted: no job opened, nothing was paid"
    if f.receipt_status == 1:
        return "opening", f"{tx} was mined but its JobOpened log is not readable yet; run resume again"
    if f.tx_pending:
        return "opening", f"{tx} is still pending: the job may still open"
    if f.attempt and f.nonce is None:
        return "failed", "interrupted before openJob was sent: nothing was paid"
    if f.nonce is not None:
        if f.latest_nonce > f.nonce:
            return "failed", (f"nonce {f.nonce} was used by another transaction and no JobOpened of this "
                              f"attempt exists: openJob was replaced or dropped, nothing was paid")
        if f.pending_nonce > f.nonce:
            return "opening", f"a transaction with nonce {f.nonce} is pending: the job may still open"
        return "failed", f"openJob (nonce {f.nonce}) was dropped: neither mined nor pending, nothing was paid"
    # A row from before attempts were recorded: only an account with nothing pending proves it.
    if f.pending_nonce > f.latest_nonce:
        return "opening", "transactions of this account are pending: the job may still open"
    return "failed", "no JobOpened of this announcement and nothing pending: the job never opened, nothing was paid"


_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def _tx_hash_in(text: str) -> str | None:
    """The transaction hash in an error message ("open job: no receipt for 0x... after 120 s")."""
    m = _TX_HASH.search(text)
    return m.group(0) if m else None


def _one_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, AgoraError) else f"{type(err).__name__}: {err}"
    return (text.splitlines() or [type(err).__name__])[0][:300]


def _outputs_in_place(out_dir: Path, result: str) -> bool:
    """Whether `out_dir` already holds outputs + manifest that verify against the settled `result`."""
    from marketplace.results import verify_result_dir

    if not (Path(out_dir) / OUTPUTS_FILE).exists() or not (Path(out_dir) / MANIFEST_FILE).exists():
        return False
    try:
        return verify_result_dir(out_dir).hex.lower() == result.lower()
    except AgoraError:
        return False


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _info(peer: str) -> PeerInfo:
    """A PeerInfo without addresses: the provider dialed us, so the connection (or peerstore) has it."""
    return PeerInfo(ID.from_base58(peer), [])


def submit_sync(market: Market, spec: JobSpec, *, store: RequesterStore, blobs: BlobStore, key: Any,
                bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                progress: Callable[[str], None] | None = None, **kwargs: Any) -> SubmitOutcome:
    """`Requester.submit` from synchronous code: one host for this one job (use the async API for many)."""

    async def main() -> SubmitOutcome:
        async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap),
                                  listen=listen, progress=progress) as req:
            return await req.submit(spec, **kwargs)

    return _run(main)


def resume_sync(market: Market, *, store: RequesterStore, blobs: BlobStore, key: Any, job: str | None = None,
                bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                withdraw: bool = False, timeout: float | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Serve, watch and settle every unfinished stored job (or `job`), then optionally withdraw refunds."""

    async def main() -> dict[str, Any]:
        async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap),
                                  listen=listen, progress=progress) as req:
            rows = [store.job(job)] if job else store.jobs(unfinished=True)
            if job and rows[0] is None:
                raise AgoraError(f"no job {job} in the requester database {store.path}")
            done: dict[str, Any] = {}
            for row in rows:
                assert row is not None
                if row.job_id is None and row.state == "opening":
                    # Adopted ("open"), proven never opened ("failed") or maybe still pending ("opening").
                    await trio.to_thread.run_sync(req.recover_opened, row)
                    row = store.job(row.ann_id)
                    assert row is not None
                if row.job_id is None:
                    if row.state == "announced":
                        store.update_job(row.ann_id, state="failed", error="interrupted before the job was opened")
                        row = store.job(row.ann_id)
                        assert row is not None
                    done[row.ann_id] = {"state": row.state, "error": row.error}
                    continue
                active = await req.resume_job(row.ann_id)
                if active is None:
                    done[row.job_id] = {"state": row.state}
                    continue
                done[row.job_id] = await req.wait(active, timeout=timeout)
            refunded = await req.withdraw_refunds() if withdraw else 0
            return {"jobs": done, "withdrawn": str(refunded)}

    return _run(main)


def _run(main: Callable[[], Any]) -> Any:
    """trio.run, with a nursery's exception group of one real error turned back into that error (so the CLI
    prints one line for an AgoraError rather than a traceback)."""
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        raise


def _leaves(err: BaseException) -> Any:
    if isinstance(err, BaseExceptionGroup):
        for sub in err.exceptions:
            yield from _leaves(sub)
    else:
        yield err
