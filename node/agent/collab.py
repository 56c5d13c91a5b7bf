"""A provider's side of collaborative training (docs/collaborative-training.md): one `CollabParticipant` per job.

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

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from eth_utils import keccak

from marketplace.blobs import blob_id_of
from marketplace.collab.aggregate import aggregate, encode
from marketplace.collab.chain import CollabChain, recover_receipt_signer
from marketplace.collab.protocol import (
    COLLAB_PROTOCOL,
    MAX_COLLAB_BYTES,
    CollabAssigned,
    Receipt,
    RoundMsg,
    UpdateMsg,
    collab_topic,
    decode_round,
)
from marketplace.collab.spec import CollabSpec, parse_collab_spec
from marketplace.errors import AgoraError
from marketplace.p2p import P2PError
from marketplace.protocol import Ack, ProtocolError, decode
from marketplace.tensors import load_tensors

if TYPE_CHECKING:
    from .agent import Agent
    from .store import BidRow

log = logging.getLogger("agora.node.collab")

MAX_SPEC_BYTES = 1 << 20
POLL_S = 2.0


@dataclass
class CollabParticipant:
    agent: Agent
    msg: CollabAssigned
    bid: BidRow
    chain: CollabChain
    spec: CollabSpec | None = None
    rounds: trio.MemorySendChannel | None = None
    inbox: trio.MemoryReceiveChannel | None = None
    updates: dict[int, str] = field(default_factory=dict)  # round -> our update blob
    models: dict[int, str] = field(default_factory=dict)  # round -> the global model it started from
    receipt: Receipt | None = None
    last_round: int = 0
    verified: int = 0  # rounds whose aggregate this node recomputed and found equal
    done: bool = False
    state: str = "assigned"
    error: str | None = None

    def __post_init__(self) -> None:
        self.rounds, self.inbox = trio.open_memory_channel(16)

    @property
    def job_id(self) -> str:
        return self.msg.job_id.lower()

    @property
    def state_file(self) -> Path:
        return self.agent.data_dir / "collab" / f"{self.job_id}.json"

    # ------------------------------------------------------------------ checks
    async def verify_assignment(self) -> None:
        """The chain must show this job open with us at `index`, at our bid's price. Raises AgoraError."""
        view = await self.agent.read(self.chain.job, bytes.fromhex(self.job_id[2:]))
        me, i = self.agent.address, self.msg.index
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

    # ------------------------------------------------------------------ messages
    def take(self, data: bytes) -> Ack:
        """A round message (pushed or gossiped): signature-checked, queued once per round."""
        try:
            msg = decode_round(data, self.bid.requester, self.job_id)
        except ProtocolError as err:
            return Ack(ok=False, reason=str(err)[:500])
        if msg.round <= self.last_round:
            return Ack(ok=True, reason="already seen")
        self.last_round = msg.round
        assert self.rounds is not None
        try:
            self.rounds.send_nowait(msg)
        except trio.WouldBlock:
            return Ack(ok=False, reason="busy")
        return Ack(ok=True)

    def serve_blob(self, peer: str, blob: str) -> bytes:
        """Our update blobs, to the requester only."""
        if peer != self.bid.requester_peer:
            raise AgoraError("not the requester of this job")
        if blob not in self.updates.values():
            raise AgoraError("not an update of this node")
        return self.agent.blobs.get_bytes(blob)

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        try:
            await self.verify_assignment()
            self.spec = await self.fetch_spec()
            await self.fetch(self.msg.shard.inputs)
            await self.fetch(self.msg.shard.labels)
            topic = collab_topic(self.job_id)
            self.agent.host.gossip.set_validator(topic, self._validate)
            sub = await self.agent.host.gossip.subscribe(topic)
            self.state = "running"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._gossip, sub)
                await self._rounds()
                nursery.cancel_scope.cancel()
            await self._after()
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - one job's failure must not stop the node
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
            log.warning("collab job %s: %s", self.job_id[:10], self.error)
        finally:
            self.save()

    async def _validate(self, data: bytes, forwarder: Any) -> bool:
        try:
            decode_round(data, self.bid.requester, self.job_id)
            return True
        except ProtocolError:
            pass
        # participants' updates are relayed too: structural check only (the coordinator checks signatures)
        try:
            decode(data, UpdateMsg, max_bytes=MAX_COLLAB_BYTES)
            return True
        except ProtocolError:
            return False

    async def _gossip(self, sub: Any) -> None:
        async for m in sub:
            try:
                self.take(m.data)
            except Exception:  # noqa: BLE001 - defensive: a message must never kill the loop
                continue

    async def fetch_spec(self) -> CollabSpec:
        raw = await self.agent.fetch_blob_from(self.bid.requester_addrs, self.bid.requester_peer, self.job_id,
                                               f"spec:{self.bid.spec_hash}", MAX_SPEC_BYTES)
        if "0x" + keccak(raw).hex() != self.bid.spec_hash.lower():
            raise AgoraError("the requester's spec does not hash to the job's spec hash")
        return parse_collab_spec(json.loads(raw), source=f"collab spec {self.bid.spec_hash[:10]}")

    async def fetch(self, blob: str) -> None:
        if self.agent.blobs.has(blob):
            return
        assert self.spec is not None
        limit = self.spec.limits.memory_mb * 2**20
        data = await self.agent.fetch_blob_from(self.bid.requester_addrs, self.bid.requester_peer, self.job_id,
                                                blob, limit)
        await trio.to_thread.run_sync(self.agent.blobs.put_bytes, data)

    async def _rounds(self) -> None:
        assert self.inbox is not None and self.spec is not None
        async for msg in self.inbox:
            if not await self._check_outcome(msg):
                return
            if msg.done:
                self.done = True
                self.state = "done"
                return
            if time.time() * 1000 > msg.deadline_ms:
                log.info("collab job %s: round %d already past its deadline; skipped", self.job_id[:10], msg.round)
                continue
            await self._train(msg)

    async def _check_outcome(self, msg: RoundMsg) -> bool:
        """The previous round's receipts and aggregate. False: stop working for this coordinator."""
        mine = next((r for r in msg.receipts if r.provider.lower() == self.agent.address.lower()), None)
        if mine is not None:
            signer = recover_receipt_signer(self.chain.chain_id, self.chain.address, bytes.fromhex(self.job_id[2:]),
                                            mine.provider, mine.count, mine.sig.as_tuple())
            if signer.lower() != self.bid.requester.lower():
                log.warning("collab job %s: receipt not signed by the requester (%s)", self.job_id[:10], signer)
            elif self.receipt is None or mine.count >= self.receipt.count:
                self.receipt = mine
                self.save()
        prev = msg.round - 1
        if not self.agent.config.collab_verify or prev not in self.updates or not msg.accepted:
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
        global_w = load_tensors(self.agent.blobs.get_bytes(start), what="global model")
        ups = [(c.provider, load_tensors(self.agent.blobs.get_bytes(c.update), what="update"), c.n)
               for c in msg.accepted]
        new = await trio.to_thread.run_sync(aggregate, global_w, ups, self.spec.aggregation.rule,
                                            self.spec.aggregation.trim)
        return blob_id_of(encode(new))

    async def _train(self, msg: RoundMsg) -> None:
        from node.collab import train_round

        assert self.spec is not None
        await self.fetch(msg.model)
        self.models[msg.round] = msg.model
        out_dir = self.agent.data_dir / "collab" / self.job_id[2:14] / f"round-{msg.round}"
        shard = self.msg.shard.model_dump()
        update = await trio.to_thread.run_sync(train_round, self.agent.sandbox, self.spec, msg.model, shard, out_dir)
        await trio.to_thread.run_sync(self.agent.blobs.put_bytes, update.blob_bytes)
        self.updates[msg.round] = update.blob_id
        um = UpdateMsg(job_id=self.job_id, round=msg.round, provider=self.agent.address, update=update.blob_id,
                       n=int(shard["n"]), compute_s=round(update.compute_s, 4)).signed(self.agent.account.key)
        data = self.mutate_update(um).encode()
        await self.agent.host.gossip.publish(collab_topic(self.job_id), data)
        try:
            reply = decode(await self.agent.request_peer(self.bid.requester_addrs, self.bid.requester_peer,
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

    async def _after(self) -> None:
        """Claim what the receipts say if the requester settles short or not at all (until the window ends)."""
        if self.receipt is None or self.receipt.count == 0:
            return
        jid = bytes.fromhex(self.job_id[2:])
        while True:
            view = await self.agent.read(self.chain.job, jid)
            now = await self.agent.refresh_chain_time()
            recorded = int(view.counts[self.msg.index])
            if view.phase == "Closed" or recorded >= self.receipt.count:
                self.state = "paid" if recorded >= self.receipt.count else "closed"
                return
            settled = view.phase == "Settled"
            if (settled and now < view.claim_end) or (not settled and view.deadline < now
                                                      < view.deadline + view.claim_window):
                try:
                    await self.agent.transact(self.chain.claim, jid, self.msg.index, self.receipt.count,
                                              self.receipt.sig.as_tuple())
                    log.info("collab job %s: claimed %d contributions", self.job_id[:10], self.receipt.count)
                except AgoraError as err:
                    log.warning("collab job %s: claim failed: %s", self.job_id[:10], err)
                    await trio.sleep(POLL_S)
                continue
            if (settled and now >= view.claim_end) or now >= view.deadline + view.claim_window:
                self.state = "unclaimed"
                return
            await trio.sleep(POLL_S)

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        doc = {"job_id": self.job_id, "index": self.msg.index, "requester": self.bid.requester,
               "state": self.state, "error": self.error, "updates": self.updates,
               "receipt": self.receipt.model_dump(mode="json") if self.receipt else None}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "kind": "collab", "index": self.msg.index, "state": self.state,
                "rounds_contributed": len(self.updates), "rounds_verified": self.verified,
                "receipt_count": self.receipt.count if self.receipt else 0,
                "error": self.error}
