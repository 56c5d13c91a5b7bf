"""The requester's side of collaborative training: choose m providers, open the job, run the rounds, settle once.

One `CollabCoordinator` runs one collab job over a `Requester` (its host, bid collection and ranking):
1. announce (kind "collab", replicas m, max price per accepted contribution) and rank bids like any job;
2. split the training set into m shards; open the job on `CollabMarket` (escrow = sum(prices) x rounds);
   tell each participant its index and shard (`CollabAssigned`);
3. round r: publish `RoundMsg(r, global model, deadline)` on the job topic and push it to each participant;
   collect `UpdateMsg`s until every live participant answered or the deadline passed; fetch each update blob from
   its provider (sha256-checked), check it (names, shapes, dtype, finite, norm), aggregate the accepted ones
   deterministically (float64, sorted by address) into the next global model; count each accepted contribution
   and sign the cumulative receipts;
4. after the last round, announce `done` with the final receipts and `settle(jobId, modelHash, counts)` on chain:
   one transaction pays every contribution.

Nothing here trusts a participant: an update that is late, malformed or out of bounds is left out of its round and
not paid. A participant that missed a round is still sent every round but no longer waited for, so a dead provider
costs one round deadline, not one per round.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
from eth_utils import to_checksum_address

from marketplace import protocol as P
from marketplace.collab.aggregate import aggregate, check_update, encode
from marketplace.collab.contract import CollabContract, sign_receipt
from marketplace.collab.protocol import (
    COLLAB_PROTOCOL,
    MAX_COLLAB_BYTES,
    CollabAssigned,
    Contribution,
    Receipt,
    Rejection,
    RoundMsg,
    Shard,
    UpdateMsg,
    collab_topic,
    decode_update,
)
from marketplace.collab.report import CollabReport, Participant, RoundRecord
from marketplace.collab.spec import CollabSpec, make_shards
from marketplace.errors import AgoraError, CollabError, InsufficientFundsError
from marketplace.fsutil import atomic_write_text
from marketplace.p2p import P2PError
from marketplace.requester.engine import Requester
from marketplace.tensors import load_tensors
from marketplace.types import from_wei

log = logging.getLogger("agora.collab")

PUSH_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 30.0
DEADLINE_SLACK_S = 180  # on top of the rounds: assignment, settlement
ROUND_OVERHEAD_S = 45  # per round on top of round_seconds: update fetches (30 s cap), pushes, aggregation
SETTLE_MARGIN_S = 60  # a round starts only if it and the settlement fit before the chain deadline
MAX_REASON = 200
DEFAULT_CLAIM_WINDOW_S = 600
LINGER_S = 20.0  # after the job: how long participants get to fetch the last round's updates


class CollabCoordinator:
    """Runs one collaborative training job for `spec` over `req`; see the module docstring. A requester
    `Extension`: its participants' messages arrive on COLLAB_PROTOCOL."""

    protocol = COLLAB_PROTOCOL

    def __init__(self, req: Requester, spec: CollabSpec, chain: CollabContract, *, out_dir: Path,
                 progress: Callable[[str], None] | None = None) -> None:
        self.req = req
        self.spec = spec
        self.chain = chain
        self.out_dir = Path(out_dir)
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.spec_json = spec.canonical_json()
        self.spec_hash = "0x" + spec.spec_hash().hex()
        self.job_id = ""
        self.participants: list[Participant] = []
        self.rounds: list[RoundRecord] = []
        self.model = str(spec.model.weights)
        self.global_w: dict[str, np.ndarray] = {}
        self.servable: set[str] = set()
        self.shards_of: dict[str, set[str]] = {}  # peer -> the shard blobs it may fetch
        self.round = 0
        self.inbox: dict[str, UpdateMsg] = {}  # provider (lower) -> its update for the current round
        self.arrived = trio.Event()
        self.bytes_served = 0
        self.receipts: dict[str, Receipt] = {}
        self.requested: dict[str, set[str]] = {}  # peer -> blobs it asked for (verification downloads)
        self.cache: dict[str, bytes] = {}  # served blobs (models, shards, updates: small next to memory)
        self.seen_updates: set[str] = set()  # every update blob offered so far: a copy is never paid twice
        self.deadline = 0  # chain time
        self.stopped: str | None = None  # why the job ended before its last round
        self.timings: dict[str, float] = {}
        self.gas: dict[str, int] = {}

    # ------------------------------------------------------------------ served to participants
    def serve_blob(self, peer: str, blob: str) -> bytes:
        """Called once per chunk: the bytes come from a cache, not from re-reading and re-hashing the file."""
        if not any(p.peer == peer for p in self.participants):
            raise AgoraError("not a participant of this job")
        if blob.startswith("spec:"):
            if blob[5:] != self.spec_hash:
                raise AgoraError("not this job's spec")
            data = self.spec_json
        elif blob in self.servable or blob in self.shards_of.get(peer, set()):
            data = self.cache.get(blob) or self.cache.setdefault(blob, self.req.blobs.get_bytes(blob))
        else:
            raise AgoraError("not a blob of this job")
        self.requested.setdefault(peer, set()).add(blob)
        return data

    def served(self, n: int) -> None:
        """Bytes of one blob chunk sent to a participant (the communication volume of a round)."""
        self.bytes_served += n

    async def on_message(self, payload: bytes, peer: str) -> bytes:
        by_address = {p.provider.lower(): p.index for p in self.participants}
        try:
            msg = decode_update(payload, by_address, self.job_id)
        except P.ProtocolError as err:
            return P.Ack.reject(err).encode()
        return self._take_update(msg).encode()

    def _take_update(self, msg: UpdateMsg) -> P.Ack:
        key = msg.provider.lower()
        held = self.inbox.get(key)
        if held is not None and held.round == msg.round:  # the same update by the other path (gossip or push)
            same = held.update == msg.update
            return P.Ack(ok=same, reason="" if same else "a different update for this round was already sent")
        if msg.round != self.round:
            return P.Ack(ok=False, code=P.RejectCode.STALE,
                         reason=f"round {msg.round} is not open (the current round is {self.round})")
        self.inbox[key] = msg
        self.arrived.set()
        return P.Ack(ok=True)

    async def _gossip_updates(self, sub: Any) -> None:
        """Updates heard on the job topic count too (a participant whose direct push failed)."""
        by_address = {p.provider.lower(): p.index for p in self.participants}
        async for m in sub:
            try:
                msg = decode_update(m.data, by_address, self.job_id)
            except P.ProtocolError:
                continue
            self._take_update(msg)

    # ------------------------------------------------------------------ run
    async def run(self, *, max_price: int, bid_window: float = 3.0, approve: bool = False, peer_wait: float = 15.0,
                  claim_window: int = DEFAULT_CLAIM_WINDOW_S,
                  on_opened: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The whole job; returns the report (also written to `out_dir/collab.json`). Raises
        NoAcceptableBidsError before anything is sent to the chain, CollabError, InsufficientFundsError."""
        spec, req = self.spec, self.req
        t0 = time.time()
        m, rounds = spec.participants, spec.rounds
        for blob in (spec.data.inputs, spec.data.labels, self.model):
            if not req.blobs.has(blob):
                raise CollabError(f"the spec needs blob {blob}, which is not in the store {req.blobs.root}")
        need = max_price * m * rounds
        have = await req.chain.read(req.market.token_balance, req.address)
        if have < need:
            raise InsufficientFundsError(f"the job escrows up to {from_wei(need)} AGORA (max price x participants x "
                                         f"rounds); the account holds {from_wei(have)}")
        self.global_w = load_tensors(req.blobs.get_bytes(self.model), what="initial weights")
        run_s = int(rounds * (spec.checks.round_seconds + ROUND_OVERHEAD_S)) + DEADLINE_SLACK_S
        input_bytes = sum(req.blobs.path(b).stat().st_size for b in (spec.data.inputs, spec.data.labels))
        pending, explanation, chosen = await req.choose(
            spec_hash=self.spec_hash, spec_json=self.spec_json, kind="collab", device=spec.device.type, k=m,
            max_price=max_price, min_collateral=0, run_seconds=run_s, window=claim_window,
            input_bytes=input_bytes // m + req.blobs.path(self.model).stat().st_size, bid_window=bid_window,
            grace=0.05, peer_wait=peer_wait, out_dir=self.out_dir)
        self.timings["bids_s"] = round(time.time() - t0, 3)
        self.progress(explanation.summary)
        shards = await trio.to_thread.run_sync(make_shards, spec, req.blobs, m)
        for i, r in enumerate(chosen):
            assert r.signed is not None
            self.participants.append(Participant(index=i, provider=r.signed.bid.provider, peer=r.peer,
                                                 price=r.signed.bid.price, shard=dict(shards[i])))
            self.shards_of[r.peer] = {shards[i]["inputs"], shards[i]["labels"]}
        self.servable.add(self.model)
        await self._open(pending.ann.ann_id, run_s, claim_window)
        if on_opened is not None:
            on_opened(self.job_id)
        req.register_extension(self.job_id, self)
        topic = collab_topic(self.job_id)
        sub = await req.node.gossip.subscribe(topic)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._gossip_updates, sub)
                await self._assign(pending.ann.ann_id)
                await req.node.gossip.wait_for_topic_peers(topic, 1, timeout=peer_wait)
                for round_no in range(1, rounds + 1):
                    if not await self._time_for_round():
                        break
                    if not await self._round(round_no, topic):
                        break
                await self._announce(RoundMsg(job_id=self.job_id, round=len(self.rounds) + 1, model=self.model,
                                              deadline_ms=0, done=True, **self._outcome_fields()), topic)
                nursery.cancel_scope.cancel()
            await self._settle()
            await self._linger()
        finally:
            req.unregister_extension(self.job_id)
        self.timings["total_s"] = round(time.time() - t0, 3)
        return self._report(explanation)

    async def _open(self, ann_id: str, run_s: int, claim_window: int) -> None:
        req = self.req
        salt = os.urandom(32)
        now = await req.chain.next_block_time()
        deadline = now + run_s
        self.deadline = deadline
        t = time.time()
        job_id, tx = await req.chain.send(self.chain.open, bytes.fromhex(self.spec_hash[2:]), salt, self.spec.rounds,
                                     deadline, claim_window, [p.provider for p in self.participants],
                                     [p.price for p in self.participants])
        self.job_id = "0x" + bytes(job_id).hex()
        self.gas["open"] = tx.gas_used
        self.timings["open_s"] = round(time.time() - t, 3)
        req.store.update_job(ann_id, state="collab", error=None)
        req.store.merge_json(ann_id, "gas", {"open": tx.gas_used})
        self.progress(f"opened collab job {self.job_id} (gas {tx.gas_used:,}): "
                      + ", ".join(f"{p.provider} at {from_wei(p.price)}/round" for p in self.participants))

    async def _assign(self, ann_id: str) -> None:
        """Tell every participant its index and shard; one that refuses or cannot be reached is not waited for."""
        async def tell(p: Participant) -> None:
            msg = CollabAssigned(ann=ann_id, job_id=self.job_id, collab=to_checksum_address(self.chain.address),
                                 index=p.index, shard=Shard(**p.shard))
            if not await self.req.assign(p, msg):
                p.waiting = False

        async with trio.open_nursery() as nursery:
            for p in self.participants:
                nursery.start_soon(tell, p)

    def _outcome_fields(self) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else None
        return {"accepted": [Contribution(**a["msg"]) for a in last.accepted] if last else [],
                "rejected": [Rejection(provider=r["provider"], reason=_clean(r["reason"])) for r in last.rejected]
                if last else [],
                "receipts": list(self.receipts.values())}

    async def _announce(self, msg: RoundMsg, topic: str) -> None:
        """Publish on the job topic (auditable by anyone) and push to each participant (gossip may drop it)."""
        data = msg.signed(self.req.market.client.account).encode()
        if len(data) > MAX_COLLAB_BYTES:  # only the rejection texts can grow: cut them, keep the codes
            short = [r.model_copy(update={"reason": r.reason.split(":")[0][:40]}) for r in msg.rejected]
            data = msg.model_copy(update={"rejected": short}).signed(self.req.market.client.account).encode()
        await self.req.node.gossip.publish(topic, data)

        async def push(p: Participant) -> None:
            with trio.move_on_after(PUSH_TIMEOUT_S):
                try:
                    await self.req.request(p.peer, COLLAB_PROTOCOL, data, timeout=PUSH_TIMEOUT_S)
                except P2PError as err:
                    log.info("round push to %s failed: %s", p.provider, err)

        async with trio.open_nursery() as nursery:
            for p in self.participants:
                nursery.start_soon(push, p)

    async def _round(self, r: int, topic: str) -> bool:
        spec = self.spec
        t0 = time.time()
        served0 = self.bytes_served
        rec = RoundRecord(round=r, model=self.model)
        self.round, self.inbox = r, {}
        deadline = t0 + spec.checks.round_seconds
        await self._announce(RoundMsg(job_id=self.job_id, round=r, model=self.model,
                                      deadline_ms=int(deadline * 1000), **self._outcome_fields()), topic)
        # Wait for every participant still counted on (or the deadline); late arrivals of others are welcome.
        with trio.move_on_at(trio.current_time() + max(0.0, deadline - time.time())):
            while not self._all_in():
                self.arrived = trio.Event()
                await self.arrived.wait()
        rec.wait_s = round(time.time() - t0, 3)
        got = dict(self.inbox)  # frozen: anything later is late
        self.round = 0
        accepted: list[tuple[str, dict[str, np.ndarray], int, UpdateMsg]] = []
        results = await self._fetch_all(got, rec)
        for p in self.participants:
            key = p.provider.lower()
            msg = got.get(key)
            if msg is None:
                p.missed.append(r)
                p.waiting = False
                rec.missing.append(p.provider)
                continue
            p.waiting = True
            rec.compute_s[p.provider] = msg.compute_s
            weights, problem = results.get(key, (None, "not fetched"))
            if weights is not None:
                problem = self._copy_problem(msg, got) or check_update(self.global_w, weights,
                                                                       max_norm=spec.checks.max_update_norm)
            if problem is not None or weights is None:
                self._reject(rec, p, msg.update, str(problem))
                continue
            accepted.append((p.provider, weights, int(p.shard["n"]), msg))
        self.seen_updates.update(m.update for m in got.values())
        if len(accepted) < spec.min_participants:
            # Too few to make a model the spec accepts: nothing is aggregated, nothing is paid, the job ends.
            for provider, _w, _n, msg in accepted:
                self._reject(rec, next(p for p in self.participants if p.provider == provider), msg.update,
                             f"round void: {len(accepted)} accepted, fewer than min_participants "
                             f"{spec.min_participants}")
            rec.wall_s = round(time.time() - t0, 3)
            rec.bytes_out = self.bytes_served - served0
            rec.aggregate = self.model
            self.rounds.append(rec)
            self.stopped = f"round {r}: {len(accepted)} updates accepted, fewer than min_participants"
            self.progress(f"stopping after round {r}: {self.stopped}")
            return False
        t_agg = time.time()
        new_w = await trio.to_thread.run_sync(
            aggregate, self.global_w, [(a, w, n) for a, w, n, _ in accepted], spec.aggregation.rule,
            spec.aggregation.trim)
        data = encode(new_w)
        blob = await trio.to_thread.run_sync(self.req.blobs.put_bytes, data)
        rec.aggregate_s = round(time.time() - t_agg, 3)
        for provider, _w, n, msg in accepted:
            part = next(p for p in self.participants if p.provider == provider)
            part.count += 1
            rec.accepted.append({"provider": provider, "update": msg.update, "n": n,
                                 "msg": {"provider": provider, "update": msg.update, "n": n}})
            self.servable.add(msg.update)  # participants fetch it to recompute the aggregate
            v, rr, ss = sign_receipt(self.req.market.client.account, self.chain.chain_id, self.chain.address,
                                     bytes.fromhex(self.job_id[2:]), provider, part.count)
            self.receipts[provider.lower()] = Receipt(provider=provider, count=part.count, sig=P.Sig.of(v, rr, ss))
        self.global_w, self.model = new_w, blob
        self.servable.add(blob)
        rec.aggregate = blob
        rec.wall_s = round(time.time() - t0, 3)
        rec.bytes_out = self.bytes_served - served0
        self.rounds.append(rec)
        self.progress(f"round {r}/{spec.rounds}: {len(accepted)} accepted, {len(rec.rejected)} rejected, "
                      f"{len(rec.missing)} missing; model {blob[:19]} ({rec.wall_s:.2f} s)")
        return True

    def _all_in(self) -> bool:
        """Every participant still counted on has sent its update; when nobody is counted on any more (all
        missed the last round), the first update to arrive ends the wait (or the deadline does)."""
        waited = [p for p in self.participants if p.waiting]
        if not waited:
            return bool(self.inbox)
        return all(p.provider.lower() in self.inbox for p in waited)

    def _copy_problem(self, msg: UpdateMsg, got: dict[str, UpdateMsg]) -> str | None:
        """An update that is the global model itself, an update offered before, or the same blob as another
        participant's this round: copies are never paid (honest training on distinct shards never collides)."""
        if msg.update == self.model:
            return "copy: the update is the global model itself"
        if msg.update in self.seen_updates:
            return "copy: this update was offered in an earlier round"
        if any(o.update == msg.update and o.provider.lower() != msg.provider.lower() for o in got.values()):
            return "copy: another participant offered the same update this round"
        return None

    def _reject(self, rec: RoundRecord, p: Participant, update: str, reason: str) -> None:
        reason = _clean(reason)
        p.rejected.append(rec.round)
        rec.rejected.append({"provider": p.provider, "update": update, "reason": reason})
        self.progress(f"round {rec.round}: rejected {p.provider}: {reason}")

    async def _time_for_round(self) -> bool:
        now = await self.req.chain.next_block_time()
        need = self.spec.checks.round_seconds + ROUND_OVERHEAD_S + SETTLE_MARGIN_S
        if now + need <= self.deadline:
            return True
        self.stopped = f"the chain deadline {self.deadline} leaves no time for another round and the settlement"
        self.progress(f"stopping: {self.stopped}")
        return False

    async def _fetch_all(self, got: dict[str, UpdateMsg],
                         rec: RoundRecord) -> dict[str, tuple[dict[str, np.ndarray] | None, str | None]]:
        limit = 2 * self.req.blobs.path(self.model).stat().st_size + 65536
        out: dict[str, tuple[dict[str, np.ndarray] | None, str | None]] = {}

        async def one(key: str, msg: UpdateMsg) -> None:
            part = next(p for p in self.participants if p.provider.lower() == key)
            try:
                with trio.fail_after(FETCH_TIMEOUT_S):
                    data = await self.req.fetch(part.peer, self.job_id, msg.update, limit)
            except (AgoraError, P2PError, OSError, trio.TooSlowError) as err:
                out[key] = (None, f"update not fetched: {type(err).__name__}: {err}"[:200])
                return
            rec.bytes_in += len(data)
            try:
                out[key] = (load_tensors(data, what="update"), None)
            except AgoraError as err:
                out[key] = (None, f"malformed: {err}"[:200])
                return
            await trio.to_thread.run_sync(self.req.blobs.put_bytes, data)

        async with trio.open_nursery() as nursery:
            for key, msg in got.items():
                nursery.start_soon(one, key, msg)
        return out

    async def _settle(self) -> None:
        model_hash = bytes.fromhex(self.model[7:])
        counts = [p.count for p in self.participants]
        t = time.time()
        tx = await self.req.chain.send(self.chain.settle, bytes.fromhex(self.job_id[2:]), model_hash, counts)
        self.gas["settle"] = tx.gas_used
        self.timings["settle_s"] = round(time.time() - t, 3)
        paid = sum(p.count * p.price for p in self.participants)
        self.progress(f"settled collab job {self.job_id[:10]} (gas {tx.gas_used:,}): paid {from_wei(paid)} AGORA "
                      f"for {sum(counts)} accepted contributions")

    async def _linger(self) -> None:
        """Serve the last round's updates until every participant that took part has fetched them to recompute
        the final aggregate (at most LINGER_S): leaving at once would deny them that check."""
        last = self.rounds[-1] if self.rounds else None
        if last is None or not self.spec.participants > 1:
            return
        updates = {a["update"]: a["provider"] for a in last.accepted}

        def fetched() -> bool:
            for p in self.participants:
                if p.provider not in {a["provider"] for a in last.accepted}:
                    continue
                want = {u for u, who in updates.items() if who != p.provider}
                if not want <= self.requested.get(p.peer, set()):
                    return False
            return True

        with trio.move_on_after(LINGER_S):
            while not fetched():
                await trio.sleep(0.1)

    def _report(self, explanation: Any) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model_path = self.out_dir / "model.safetensors"
        model_path.write_bytes(self.req.blobs.get_bytes(self.model))
        per_round = [max(r.bytes_in + r.bytes_out, 0) for r in self.rounds]
        rounds = [r.model_copy(update={"accepted": [{k: v for k, v in a.items() if k != "msg"} for a in r.accepted]})
                  for r in self.rounds]
        report = CollabReport(
            job_id=self.job_id, spec_hash=self.spec_hash, model=self.model, model_hash="0x" + self.model[7:],
            model_file=str(model_path), rule=self.spec.aggregation.rule, rounds=rounds, stopped=self.stopped,
            deadline=int(self.deadline), participants=list(self.participants),
            paid=sum(p.count * p.price for p in self.participants),
            escrow=sum(p.price for p in self.participants) * self.spec.rounds,
            bytes_per_round=round(float(np.mean(per_round)), 1) if per_round else 0.0,
            gas=self.gas, timings=self.timings, explanation=explanation)
        atomic_write_text(self.out_dir / "collab.json", report.to_json_text())
        return report.to_json()



def run_collab_sync(market: Any, spec: CollabSpec, *, store: Any, blobs: Any, key: Any, out_dir: Path,
                    bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                    progress: Callable[[str], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """One collaborative job from synchronous code (the CLI): its own host, the whole job, the report."""
    from marketplace.requester.sync import run_trio

    async def main() -> dict[str, Any]:
        async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap),
                                  listen=listen, progress=progress) as req:
            coord = CollabCoordinator(req, spec, CollabContract(market.client), out_dir=out_dir, progress=progress)
            return await coord.run(**kwargs)

    return run_trio(main)


def _clean(reason: str) -> str:
    """A rejection reason as it goes on the wire: printable ASCII (peers' error texts are in it), bounded."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in reason)
    return text[:MAX_REASON]
