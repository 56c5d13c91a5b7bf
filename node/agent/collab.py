"""A provider's side of collaborative training (docs/collaborative-training.md): `CollabJobs` joins the jobs this
node was assigned (and, after a restart, makes sure saved receipts get paid); one `CollabParticipant` per job.

It trusts nothing it cannot check:
- the assignment only after the chain shows this node at that index, at its own bid's price, for the spec its
  bid quoted, with the escrow in place;
- the spec by its keccak (the on-chain spec hash), every blob by its sha256;
- each round message by the requester's signature; each receipt by its EIP-712 signer, and only if the count
  never goes down;
- each aggregate by recomputing it from the accepted updates (the same float64 rule, same order): a coordinator
  whose aggregate does not match gets no more work from this node.
Receipts are kept on disk (`<data_dir>/collab/<job id>.json`), so a restarted node can still claim its pay if the
requester never settles.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak
from libp2p.peer.id import ID

from marketplace.blobs import blob_id_of
from marketplace.collab.aggregate import aggregate, encode
from marketplace.collab.contract import CollabContract, CollabJobView, recover_receipt_signer
from marketplace.collab.protocol import (
    COLLAB_PROTOCOL,
    CollabAssigned,
    Receipt,
    RoundMsg,
    UpdateMsg,
    collab_topic,
    decode_round,
    decode_update,
)
from marketplace.collab.spec import CollabSpec, parse_collab_spec
from marketplace.errors import AgoraError
from marketplace.fsutil import atomic_write_json
from marketplace.p2p import P2PError
from marketplace.p2p.gossip import Subscription
from marketplace.protocol import Ack, ProtocolError, RejectCode, decode
from marketplace.tensors import load_tensors

from .context import NodeContext
from .store import BidRow

log = logging.getLogger("agora.node.collab")
node_log = logging.getLogger("agora.node")  # joins and resumed claims are node events

MAX_SPEC_BYTES = 1 << 20
POLL_S = 2.0
DEADLINE_POLL_S = 3.0  # while waiting for a round: how often the chain deadline is checked
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


@dataclass
class CollabParticipant:
    ctx: NodeContext
    msg: CollabAssigned
    bid: BidRow
    chain: CollabContract
    spec: CollabSpec | None = None
    rounds: trio.MemorySendChannel | None = None
    inbox: trio.MemoryReceiveChannel | None = None
    updates: dict[int, str] = field(default_factory=dict)  # round -> our update blob
    models: dict[int, str] = field(default_factory=dict)  # round -> the global model it started from
    receipt: Receipt | None = None
    view: CollabJobView | None = None  # the job as the chain showed it at assignment (rounds, deadline, providers)
    own_accepted: int = 0  # rounds whose outcome listed our update as accepted
    cache: dict[str, bytes] = field(default_factory=dict)  # our update blobs, served chunk by chunk
    last_round: int = 0
    verified: int = 0  # rounds whose aggregate this node recomputed and found equal
    done: bool = False
    state: str = "assigned"
    error: str | None = None

    def __post_init__(self) -> None:
        self.rounds, self.inbox = trio.open_memory_channel(64)

    @property
    def job_id(self) -> str:
        return self.msg.job_id.lower()

    @property
    def state_file(self) -> Path:
        return self.ctx.data_dir / "collab" / f"{self.job_id}.json"

    # ------------------------------------------------------------------ checks
    async def verify_assignment(self) -> None:
        """The chain must show this job open with us at `index`, at our bid's price. Raises AgoraError."""
        view = await self.ctx.io.read(self.chain.job, bytes.fromhex(self.job_id[2:]))
        me, i = self.ctx.address, self.msg.index
        if view.phase != "Open":
            raise AgoraError(f"collab job {self.job_id} is {view.phase}, not open")
        if view.requester.lower() != self.bid.requester.lower():
            raise AgoraError("the job's requester is not the one we bid to")
        if "0x" + bytes(view.spec_hash).hex() != self.bid.spec_hash.lower():
            raise AgoraError("the job's spec hash is not the one we bid on")
        if i >= len(view.providers) or view.providers[i].lower() != me.lower():
            raise AgoraError(f"participant {i} of {self.job_id} is not {me}")
        if int(view.prices[i]) != self.bid.price:
            raise AgoraError(f"the job pays {view.prices[i]} per round, our bid asked {self.bid.price}")
        self.view = view

    def receipt_problem(self, r: Receipt) -> str | None:
        """Why the contract would refuse this receipt of ours (None: it would pay it). OpenZeppelin's ECDSA
        refuses v other than 27/28 and s in the upper half; the contract refuses a count above the rounds."""
        v, _r, s_ = r.sig.as_tuple()
        if v not in (27, 28) or int.from_bytes(s_, "big") > SECP256K1_HALF_N:
            return "malleable or malformed signature"
        if self.view is not None and r.count > self.view.rounds:
            return f"count {r.count} above the job's {self.view.rounds} rounds"
        signer = recover_receipt_signer(self.chain.chain_id, self.chain.address, bytes.fromhex(self.job_id[2:]),
                                        r.provider, r.count, r.sig.as_tuple())
        if signer.lower() != self.bid.requester.lower():
            return f"signed by {signer}, not the requester"
        return None

    # ------------------------------------------------------------------ messages
    def take(self, data: bytes) -> Ack:
        """A round message (pushed or gossiped): signature-checked, queued once per round."""
        try:
            msg = decode_round(data, self.bid.requester, self.job_id)
        except ProtocolError as err:
            return Ack.reject(err)
        if msg.round <= self.last_round:
            return Ack(ok=True, reason="already seen")
        if self.view is not None and msg.round > self.view.rounds + 1:
            return Ack(ok=False, code=RejectCode.STALE,
                       reason=f"round {msg.round} beyond the job's {self.view.rounds} rounds")
        assert self.rounds is not None
        try:
            self.rounds.send_nowait(msg)
        except trio.WouldBlock:
            return Ack(ok=False, code=RejectCode.BUSY, reason="busy")
        self.last_round = msg.round  # only once queued: a dropped message can come again
        return Ack(ok=True)

    def serve_blob(self, peer: str, blob: str) -> bytes:
        """Our update blobs, to the requester only."""
        if peer != self.bid.requester_peer:
            raise AgoraError("not the requester of this job")
        data = self.cache.get(blob)
        if data is None:
            raise AgoraError("not an update of this node")
        return data

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        """Take part until the last round, the chain deadline or a reason to stop; then make sure we are paid
        for what the receipts say (claiming if the requester settles short or not at all)."""
        try:
            await self._participate()
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - one job's failure must not stop the node
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
            log.warning("collab job %s: %s", self.job_id[:10], self.error)
        self.save()
        if self.receipt is not None and self.receipt.count > 0:
            await claim_until_paid(self.ctx, self.chain, self.job_id, self.msg.index, self.receipt, self._set_state)
        self.save()

    def _set_state(self, state: str) -> None:
        self.state = state
        self.save()

    async def _participate(self) -> None:
        if self.view is None:
            await self.verify_assignment()
        self.spec = await self.fetch_spec()
        await self.fetch(self.msg.shard.inputs)
        await self.fetch(self.msg.shard.labels)
        topic = collab_topic(self.job_id)
        self.ctx.net.gossip.set_validator(topic, self._validate)
        sub = await self.ctx.net.gossip.subscribe(topic)
        self.state = "running"
        assert self.view is not None
        now = await self.ctx.refresh_chain_time()
        stop_at = trio.current_time() + max(0.0, self.view.deadline - now)  # the chain deadline, in trio time
        with trio.move_on_at(stop_at) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._gossip, sub)
                await self._rounds()
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught and self.state == "running":
            self.state = "deadline"
            log.info("collab job %s: the chain deadline passed before the last round", self.job_id[:10])

    async def _validate(self, data: bytes, forwarder: ID) -> bool:
        """Relay only round messages signed by the requester and updates signed by a participant."""
        try:
            decode_round(data, self.bid.requester, self.job_id)
            return True
        except ProtocolError:
            pass
        try:
            providers = {p.lower(): i for i, p in enumerate(self.view.providers)} if self.view else {}
            decode_update(data, providers, self.job_id)
            return True
        except ProtocolError:
            return False

    async def _gossip(self, sub: Subscription) -> None:
        async for m in sub:
            try:
                self.take(m.data)
            except Exception:  # noqa: BLE001 - defensive: a message must never kill the loop
                continue

    async def fetch_spec(self) -> CollabSpec:
        raw = await self.ctx.fetch_blob_from(self.bid.requester_addrs, self.bid.requester_peer, self.job_id,
                                               f"spec:{self.bid.spec_hash}", MAX_SPEC_BYTES)
        if "0x" + keccak(raw).hex() != self.bid.spec_hash.lower():
            raise AgoraError("the requester's spec does not hash to the job's spec hash")
        return parse_collab_spec(json.loads(raw), source=f"collab spec {self.bid.spec_hash[:10]}")

    async def fetch(self, blob: str) -> None:
        if self.ctx.blobs.has(blob):
            return
        assert self.spec is not None
        limit = min(self.spec.limits.memory_mb, self.ctx.config.max_input_mb) * 2**20
        data = await self.ctx.fetch_blob_from(self.bid.requester_addrs, self.bid.requester_peer, self.job_id,
                                                blob, limit)
        await trio.to_thread.run_sync(self.ctx.blobs.put_bytes, data)

    async def _next_round(self) -> RoundMsg | None:
        """The next round message, or None once the job's chain deadline has passed (chain time is the
        authority: a requester that vanished must not keep the node waiting for rounds that never come)."""
        assert self.inbox is not None and self.view is not None
        while True:
            with trio.move_on_after(DEADLINE_POLL_S):
                return await self.inbox.receive()
            if await self.ctx.refresh_chain_time() > self.view.deadline:
                self.state = "deadline"
                log.info("collab job %s: the chain deadline passed before the last round", self.job_id[:10])
                return None

    async def _rounds(self) -> None:
        assert self.inbox is not None and self.spec is not None
        while (msg := await self._next_round()) is not None:
            if not await self._check_outcome(msg):
                return
            if msg.done:
                self.done = True
                self.state = "done"
                return
            phase = (await self.ctx.io.read(self.chain.job, bytes.fromhex(self.job_id[2:]))).phase
            if phase != "Open":  # settled early (or closed): work from now on could go unpaid
                self.state, self.error = "stopped", f"the job is {phase} on chain while rounds go on"
                log.warning("collab job %s: %s", self.job_id[:10], self.error)
                return
            if time.time() * 1000 > msg.deadline_ms:
                log.info("collab job %s: round %d already past its deadline; skipped", self.job_id[:10], msg.round)
                continue
            try:
                await self._train(msg)
            except (AgoraError, P2PError, ProtocolError, OSError) as err:  # this round is lost, not the job
                log.warning("collab job %s round %d: %s: %s", self.job_id[:10], msg.round, type(err).__name__, err)

    async def _check_outcome(self, msg: RoundMsg) -> bool:
        """The previous round's receipts and aggregate. False: stop working for this coordinator."""
        me = self.ctx.address.lower()
        prev = msg.round - 1
        ours = self.updates.get(prev)
        if ours is not None and any(c.provider.lower() == me and c.update == ours for c in msg.accepted):
            self.own_accepted += 1
        mine = next((r for r in msg.receipts if r.provider.lower() == me), None)
        if mine is not None:
            problem = self.receipt_problem(mine)
            if problem is not None:
                log.warning("collab job %s: unusable receipt (%s)", self.job_id[:10], problem)
            elif self.receipt is None or mine.count > self.receipt.count:
                self.receipt = mine
                self.save()
        have = self.receipt.count if self.receipt else 0
        if have < self.own_accepted:  # our update was used but not receipted: no more work for this requester
            self.state, self.error = "stopped", (f"{self.own_accepted} of our updates accepted, receipts for "
                                                 f"{have}")
            log.error("collab job %s: %s", self.job_id[:10], self.error)
            return False
        if not self.ctx.config.collab_verify or prev not in self.updates or not msg.accepted:
            return True
        assert self.spec is not None
        try:
            expected = await self._recompute(msg, prev)
        except (AgoraError, P2PError, ProtocolError, OSError) as err:
            log.warning("collab job %s: could not recompute round %d: %s", self.job_id[:10], prev, err)
            return True
        if expected != msg.model:
            self.state, self.error = "stopped", (f"round {prev}: the coordinator's aggregate {msg.model} is not "
                                                 f"the aggregate of its accepted updates ({expected})")
            log.error("collab job %s: %s", self.job_id[:10], self.error)
            return False
        self.verified += 1
        return True

    async def _recompute(self, msg: RoundMsg, prev: int) -> str:
        assert self.spec is not None
        start = self.models.get(prev)
        if start is None:
            raise AgoraError("the round's starting model is unknown")
        for c in msg.accepted:
            await self.fetch(c.update)
        global_w = load_tensors(self.ctx.blobs.get_bytes(start), what="global model")
        ups = [(c.provider, load_tensors(self.ctx.blobs.get_bytes(c.update), what="update"), c.n)
               for c in msg.accepted]
        new = await trio.to_thread.run_sync(aggregate, global_w, ups, self.spec.aggregation.rule,
                                            self.spec.aggregation.trim)
        return blob_id_of(encode(new))

    async def _train(self, msg: RoundMsg) -> None:
        from node.runtime.collab import train_round

        assert self.spec is not None
        await self.fetch(msg.model)
        self.models[msg.round] = msg.model
        out_dir = self.ctx.data_dir / "collab" / self.job_id[2:14] / f"round-{msg.round}"
        shard = self.msg.shard.model_dump()
        update = await trio.to_thread.run_sync(train_round, self.ctx.box, self.spec, msg.model, shard, out_dir)
        await trio.to_thread.run_sync(self.ctx.blobs.put_bytes, update.blob_bytes)
        self.cache[update.blob_id] = update.blob_bytes
        self.updates[msg.round] = update.blob_id
        um = UpdateMsg(job_id=self.job_id, round=msg.round, provider=self.ctx.address, update=update.blob_id,
                       n=int(shard["n"]), compute_s=round(update.compute_s, 4)).signed(self.ctx.account.key)
        data = self.mutate_update(um).encode()
        await self.ctx.net.gossip.publish(collab_topic(self.job_id), data)
        try:
            reply = decode(await self.ctx.request_peer(self.bid.requester_addrs, self.bid.requester_peer,
                                                         COLLAB_PROTOCOL, data, timeout=10), Ack)
            if not reply.ok:
                log.warning("collab job %s round %d: update refused: %s", self.job_id[:10], msg.round, reply.reason)
        except (P2PError, ProtocolError) as err:
            log.warning("collab job %s round %d: update not delivered: %s", self.job_id[:10], msg.round, err)
        log.info("collab job %s round %d: update %s (%.2f s compute)", self.job_id[:10], msg.round,
                 update.blob_id[:19], update.compute_s)

    def mutate_update(self, msg: UpdateMsg) -> UpdateMsg:
        """The update as sent (tests patch this to play a cheating participant)."""
        return msg

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        doc = {"job_id": self.job_id, "index": self.msg.index, "requester": self.bid.requester,
               "verified": self.verified, "own_accepted": self.own_accepted,
               "state": self.state, "error": self.error, "updates": self.updates,
               "receipt": self.receipt.model_dump(mode="json") if self.receipt else None}
        atomic_write_json(self.state_file, doc)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "kind": "collab", "index": self.msg.index, "state": self.state,
                "rounds_contributed": len(self.updates), "rounds_verified": self.verified,
                "receipt_count": self.receipt.count if self.receipt else 0,
                "error": self.error}


class CollabJobs:
    """The collab jobs of this node: joining one once the chain confirms the assignment, and making sure that
    receipts saved before a restart get paid."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.participants: dict[str, CollabParticipant] = {}  # collab job id -> its participant
        self._chain: CollabContract | None = None

    def chain(self) -> CollabContract:
        """The deployment's CollabMarket. Raises AgoraError for a deployment from before CollabMarket."""
        if self._chain is None:
            self._chain = CollabContract(self.ctx.client)
        return self._chain

    async def join(self, msg: CollabAssigned) -> tuple[bool, str]:
        """Start a collaborative training participant, once the chain confirms the assignment."""
        ctx = self.ctx
        job_id = msg.job_id.lower()
        if job_id in self.participants:
            return True, "already known"
        bid = next((b for b in ctx.store.bids_for(msg.ann) if b.kind == "collab"), None)
        if bid is None:
            return False, "no collab bid of this node for that announcement"
        try:
            chain = self.chain()
        except AgoraError as err:  # a deployment from before CollabMarket
            return False, str(err)
        if chain.address.lower() != msg.collab.lower():
            return False, f"collab contract {msg.collab} is not the deployment's {chain.address}"
        part = CollabParticipant(ctx=ctx, msg=msg, bid=bid, chain=chain)
        try:
            await part.verify_assignment()
        except AgoraError as err:
            return False, str(err)
        self.participants[job_id] = part
        ctx.store.set_bid_outcome(bid.nonce, "won", job_id)
        ctx.metrics.bids.labels(outcome="won").inc()
        node_log.info("joined collab job %s as participant %d", job_id, msg.index)
        ctx.start_soon(part.run)
        return True, "ok"

    def resume_claims(self) -> None:
        """Receipts of collab jobs from before a restart: make sure they are paid (claim if settled short)."""
        docs = saved_claims(self.ctx.data_dir)
        if not docs or not self.ctx.client.deployment.collab:
            return
        chain = self.chain()
        for doc in docs:
            node_log.info("collab job %s: checking that receipt %s is paid", doc["job_id"], doc["receipt"]["count"])
            self.ctx.start_soon(claim_until_paid, self.ctx, chain, doc["job_id"], int(doc["index"]),
                                Receipt.model_validate(doc["receipt"]),
                                functools.partial(mark_saved, self.ctx.data_dir, doc["job_id"]))

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.participants.values()]


async def claim_until_paid(ctx: NodeContext, chain: CollabContract, job_id: str, index: int, receipt: Receipt,
                           on_state: Callable[[str], None] | None = None) -> str:
    """Claim what `receipt` says if the chain credits less, for as long as the contract accepts claims.
    Returns "paid", "closed" or "unclaimed". Used after the rounds and, for saved receipts, after a restart."""
    jid = bytes.fromhex(job_id[2:])
    say = on_state or (lambda _s: None)
    while True:
        view = await ctx.io.read(chain.job, jid)
        now = await ctx.refresh_chain_time()
        recorded = int(view.counts[index]) if index < len(view.counts) else 0
        if recorded >= receipt.count:
            say("paid")
            return "paid"
        if view.phase == "Closed":
            say("closed")
            return "closed"
        settled = view.phase == "Settled"
        open_for_claims = (now <= view.claim_end) if settled else (view.deadline < now <= view.deadline
                                                                    + view.claim_window)
        if open_for_claims:
            try:
                await ctx.io.send(chain.claim, jid, index, receipt.count, receipt.sig.as_tuple())
                log.info("collab job %s: claimed %d contributions", job_id[:10], receipt.count)
                continue
            except AgoraError as err:
                log.warning("collab job %s: claim failed: %s", job_id[:10], err)
        elif now > (view.claim_end if settled else view.deadline + view.claim_window):
            say("unclaimed")
            return "unclaimed"
        await trio.sleep(POLL_S)


def saved_claims(data_dir: Path) -> list[dict[str, Any]]:
    """Receipts saved by participants that may still need claiming (after a restart)."""
    out = []
    for f in sorted((data_dir / "collab").glob("0x*.json")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("receipt") and doc.get("state") not in ("paid", "closed", "unclaimed"):
            out.append(doc)
    return out


def mark_saved(data_dir: Path, job_id: str, state: str) -> None:
    """Record a saved receipt's outcome (so a later restart does not check it again)."""
    f = data_dir / "collab" / f"{job_id}.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return
    doc["state"] = state
    atomic_write_json(f, doc)
