"""Jobs: claiming assignments, following the chain, and driving each won job to settlement.

    Assigned (stream) or JobOpened/JobAssigned (chain logs) -> claim: checked on chain -> job row -> drive(job)
    drive: fetch spec + blobs -> Sandbox.run -> k = 1: ResultMsg | k >= 2: persist salt, CommitMsg, RevealMsg
           -> chain fallbacks (submitResult / commit / reveal / finalize, by chain time) -> settled, earnings

Every step reads its state from the store and the chain, so a SIGKILLed node restarted on the same data dir
picks each unsettled job up where it was (see docs/node.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak
from web3 import Web3
from web3.types import LogReceipt

from marketplace.blobs import blob_id_of
from marketplace.eip712 import sign_commit, sign_result
from marketplace.errors import AgoraError
from marketplace.jobs import JobView
from marketplace.p2p import P2PError
from marketplace.protocol import (
    RESULT_PROTOCOL,
    Ack,
    CommitMsg,
    OutputRef,
    ProtocolError,
    ResultMsg,
    RevealMsg,
    Sig,
    decode,
)
from marketplace.spec import JobSpec, parse_spec
from marketplace.types import Assignment, JobPhase, b32, commitment_for

from .context import NodeContext
from .store import SENT_COMMIT, SENT_RESULT, SENT_REVEAL, ProviderJobRow

log = logging.getLogger("agora.node")

CHAIN_POLL_S = 0.5
JOB_POLL_S = 1.0
MAX_SPEC_BYTES = 1 << 20


class JobRunner:
    """Assignments of this node's bids and the jobs they became, from claim to settlement."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.io = ctx.io
        self.market = ctx.market
        self.store = ctx.store
        self.claim_lock = trio.Lock()
        self.slots = trio.CapacityLimiter(ctx.config.capacity)
        self._driving: set[str] = set()
        self._wake: dict[str, trio.Event] = {}  # per job: set by a Nudge to re-read the chain at once

    # ------------------------------------------------------------------ assignment
    async def claim(self, job_id: str, *, index: int | None = None) -> tuple[bool, str]:
        """Take job `job_id` if the chain shows one of our pending bids assigned in it."""
        job_id = job_id.lower()
        me = self.ctx.address
        async with self.claim_lock:
            if self.store.job(job_id) is not None:
                return True, "already known"
            try:
                view = await self.io.read(self.market.job, b32(job_id))
            except AgoraError as err:
                return False, f"job not found on chain: {err}"
            job = view.job
            if job is None or view.settled:
                return False, "job is settled"
            mine = [i for i, w in enumerate(job.workers) if w.provider == me]
            if index is not None:
                if index not in mine:
                    return False, f"worker {index} of {job_id} is not {me}"
                mine = [index]
            if not mine:
                return False, f"{me} is not a worker of {job_id}"
            spec_hash = "0x" + job.spec_hash.hex()
            for i in mine:
                w = job.workers[i]
                bid = next((b for b in self.store.unclaimed_bids(spec_hash)
                            if b.requester == job.requester and b.price == w.price
                            and b.collateral == w.collateral), None)
                if bid is not None:
                    break
            else:
                return False, "no bid of this node matches the assignment (spec hash, requester, price)"
            row = ProviderJobRow(job_id=job_id, ann_id=bid.ann_id, spec_hash=spec_hash, kind=bid.kind, idx=i,
                         replicas=job.replicas, price=w.price, collateral=w.collateral, requester=job.requester,
                         requester_peer=bid.requester_peer, requester_addrs=bid.requester_addrs,
                         deadline=job.deadline, window=job.window, bid_nonce=bid.nonce)
            if self.store.add_job(row):
                self.store.set_bid_outcome(bid.nonce, "won", job_id)
                self.ctx.metrics.bids.labels(outcome="won").inc()
                self.ctx.metrics.jobs.labels(state="assigned").inc()
                log.info("assigned job %s (worker %d of %d, %s)", job_id, i, job.replicas, bid.kind)
                self.spawn(job_id)
            return True, "ok"

    def wake(self, job_id: str) -> bool:
        """A Nudge: the job's driver re-reads the chain at once. False: no such job is being driven."""
        event = self._wake.get(job_id.lower())
        if event is not None:
            event.set()
        return event is not None

    async def chain_loop(self) -> None:
        """Follow the chain: time, our assignments (a lost Assigned message still gets the job run), expiries.
        One log query per chunk for both JobOpened and JobAssigned; the cursor is the store's `last_block`."""
        contract = self.ctx.client.market
        events = {e.topic: e for e in (contract.events.JobOpened(), contract.events.JobAssigned())}
        start = self.store.get_meta("last_block")
        follower = self.io.follower(address=contract.address, topics=[list(events)],
                                    start=int(start) if start is not None else self.ctx.block,
                                    save=lambda block: self.store.set_meta("last_block", str(block)))

        async def on_chunk(logs: list[LogReceipt]) -> None:
            for raw in logs:
                event = events.get(Web3.to_hex(raw["topics"][0]))
                if event is None:
                    continue
                args = event.process_log(raw)["args"]
                workers = [Assignment.from_abi(w) for w in args["workers"]]
                if any(w.provider == self.ctx.address for w in workers):
                    ok, why = await self.claim("0x" + bytes(args["jobId"]).hex())
                    if not ok:
                        log.info("job %s names this node but: %s", bytes(args["jobId"]).hex(), why)

        while True:
            try:
                head, _ = await follower.poll(on_chunk=on_chunk)
                self.ctx.note_head(head)
                lost = self.store.expire_bids(self.ctx.chain_now)
                if lost:
                    self.ctx.metrics.bids.labels(outcome="lost").inc(lost)
            except trio.Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - an RPC hiccup must not stop the node
                log.warning("chain poll failed: %s: %s", type(err).__name__, err)
            await trio.sleep(CHAIN_POLL_S)

    # ------------------------------------------------------------------ one job
    def spawn(self, job_id: str) -> None:
        if job_id in self._driving or self.ctx.nursery is None:
            return
        self._driving.add(job_id)
        self._wake.setdefault(job_id, trio.Event())
        self.ctx.start_soon(self.drive, job_id)

    async def drive(self, job_id: str) -> None:
        """Take one job from its stored state to settlement; retries every step until it is final."""
        try:
            while True:
                row = self.store.job(job_id)
                if row is None or row.state in ("settled", "failed"):
                    return
                try:
                    if row.state in ("assigned", "running"):
                        await self.execute(row)
                        continue
                    await self.settle_step(row)
                except trio.Cancelled:
                    raise
                except Exception as err:  # noqa: BLE001 - retried: every step is idempotent against the chain
                    log.warning("job %s (%s): %s: %s", job_id, row.state, type(err).__name__, err)
                wake = self._wake.setdefault(job_id, trio.Event())
                with trio.move_on_after(JOB_POLL_S):
                    await wake.wait()
                self._wake[job_id] = trio.Event()
        finally:
            self._driving.discard(job_id)
            self._wake.pop(job_id, None)

    async def execute(self, row: ProviderJobRow) -> None:
        async with self.slots:
            self.store.update_job(row.job_id, state="running")
            spec = await self.fetch_inputs(row)
            if spec is None:
                return
            out = self.ctx.data_dir / "results" / row.job_id
            t0 = time.monotonic()
            # abandon_on_cancel: trio has it; the stale trio-stubs of trio-typing (a libp2p dependency) lack it.
            manifest = await trio.to_thread.run_sync(self.ctx.box.run, spec, out, abandon_on_cancel=True)  # type: ignore[call-arg]
            seconds = time.monotonic() - t0
            self.ctx.metrics.execution.observe(seconds)
        if manifest.status != "ok" or not manifest.result_hash:
            self._fail(row, f"job ended with status {manifest.status}: {(manifest.error or '').strip()[-300:]}")
            return
        outputs = [self._output_ref(out, name).model_dump() for name in ("outputs.safetensors", "manifest.json")]
        update: dict[str, Any] = {"state": "computed", "result": manifest.result_hash, "result_dir": str(out),
                                  "outputs": outputs, "exec_seconds": round(seconds, 3)}
        if row.replicas >= 2 and not row.salt:
            update["salt"] = "0x" + os.urandom(32).hex()  # stored with the result, before any commitment exists
        self.store.update_job(row.job_id, **update)
        self.ctx.metrics.jobs.labels(state="computed").inc()
        log.info("job %s computed: result %s in %.2f s", row.job_id, manifest.result_hash, seconds)

    @staticmethod
    def _output_ref(out: Path, name: str) -> OutputRef:
        data = (out / name).read_bytes()
        return OutputRef(name=name, blob=blob_id_of(data), size=len(data))  # type: ignore[arg-type]

    def _fail(self, row: ProviderJobRow, reason: str) -> None:
        self.store.update_job(row.job_id, state="failed", error=reason[:1000])
        self.ctx.metrics.jobs.labels(state="failed").inc()
        log.warning("job %s failed: %s", row.job_id, reason)

    # ------------------------------------------------------------------ inputs
    async def fetch_inputs(self, row: ProviderJobRow) -> JobSpec | None:
        """The spec (keccak-checked) and every blob (sha256-checked) from the requester; None if it is too late."""
        while True:
            try:
                return await self._fetch_inputs(row)
            except (P2PError, ProtocolError, OSError) as err:
                now = await self.ctx.refresh_chain_time()
                if now > row.deadline:
                    self._fail(row, f"inputs not fetched before the deadline: {err}")
                    return None
                log.warning("job %s: fetching inputs failed (%s); retrying", row.job_id, err)
                await trio.sleep(2)

    async def _fetch_inputs(self, row: ProviderJobRow) -> JobSpec:
        spec_file = self.ctx.data_dir / "specs" / f"{row.spec_hash}.json"
        if spec_file.exists():
            raw = spec_file.read_bytes()
        else:
            raw = await self.fetch_blob(row, f"spec:{row.spec_hash}", MAX_SPEC_BYTES)
            if "0x" + keccak(raw).hex() != row.spec_hash:
                raise ProtocolError("the requester's spec does not hash to the job's spec hash", reason="integrity")
            spec_file.parent.mkdir(parents=True, exist_ok=True)
            spec_file.write_bytes(raw)
        try:
            spec = parse_spec(json.loads(raw), source=f"spec {row.spec_hash[:10]}")
        except (ValueError, AgoraError) as err:
            raise ProtocolError(f"unusable spec: {err}", reason="malformed") from None
        blobs = self.ctx.blobs
        budget = min(self.ctx.config.max_input_mb, spec.limits.memory_mb) * 2**20
        for blob in spec.blobs():
            if blobs.has(blob):
                budget -= blobs.path(blob).stat().st_size
                continue
            data = await self.fetch_blob(row, blob, budget)  # sha256-checked against its id
            budget -= len(data)
            await trio.to_thread.run_sync(blobs.put_bytes, data)
        return spec

    async def fetch_blob(self, row: ProviderJobRow, blob: str, limit: int) -> bytes:
        """A blob of `row`'s job from its requester (see protocol.fetch_blob: capped, sha256-checked)."""
        return await self.ctx.fetch_blob_from(row.requester_addrs, row.requester_peer, row.job_id, blob, limit)

    # ------------------------------------------------------------------ settlement
    async def settle_step(self, row: ProviderJobRow) -> None:
        """One pass over a computed job: messages to the requester, then chain fallbacks by chain time."""
        view = await self.io.read(self.market.job, b32(row.job_id))
        now = await self.ctx.refresh_chain_time()
        if view.settled:
            self._settled(row, view)
            return
        margin = self.ctx.config.settle_margin_s
        assert view.job is not None
        if row.replicas == 1 and view.job.phase != JobPhase.DISPUTED:
            await self._settle_single(row, view, now, margin)
            return
        if not row.salt:  # a disputed k = 1 job turns into commit-reveal, with the worker as participant 0
            row.salt = "0x" + os.urandom(32).hex()
            self.store.update_job(row.job_id, salt=row.salt)
        await self._settle_replicated(row, view, now, margin)

    async def _settle_single(self, row: ProviderJobRow, view: JobView, now: int, margin: int) -> None:
        ctx, job = self.ctx, view.job
        assert job is not None and row.result is not None
        result = b32(row.result)
        if not row.sent & SENT_RESULT and job.phase == JobPhase.ASSIGNED and now < row.deadline:
            v, r, s = sign_result(ctx.account, b32(row.job_id), result, chain_id=ctx.chain_id,
                                  market=ctx.market_address)
            msg = ResultMsg(job_id=row.job_id, result=row.result, sig=Sig.of(v, r, s),  # type: ignore[arg-type]
                            outputs=[OutputRef(**o) for o in row.outputs or []])
            if await self._tell(row, msg):
                self.store.update_job(row.job_id, sent=row.sent | SENT_RESULT)
        if job.phase == JobPhase.ASSIGNED and now >= row.deadline - margin:
            if now <= row.deadline:
                log.info("job %s not settled by deadline - %d s: submitting the result", row.job_id, margin)
                await self.io.send(self.market.submit_result, b32(row.job_id), result)
                self.store.update_job(row.job_id, state="submitted")
                ctx.metrics.jobs.labels(state="submitted").inc()
            else:
                await self._finalize(row)
        elif job.phase == JobPhase.SUBMITTED and now > job.challenge_end:
            await self._finalize(row)

    async def _settle_replicated(self, row: ProviderJobRow, view: JobView, now: int, margin: int) -> None:
        ctx, job = self.ctx, view.job
        assert job is not None and row.result is not None and row.salt is not None
        deadline, window = job.deadline, job.window  # a dispute sets a new deadline
        result, salt = b32(row.result), b32(row.salt)
        jid = b32(row.job_id)
        commitment = commitment_for(jid, ctx.address, result, salt)
        bit = 1 << row.idx
        everyone = (1 << len(job.participants)) - 1
        committed, revealed = view.committed_mask & bit, view.revealed_mask & bit
        if not row.sent & SENT_COMMIT and not committed and now < deadline:
            index, c, v, r, s = sign_commit(ctx.account, jid, row.idx, commitment, chain_id=ctx.chain_id,
                                            market=ctx.market_address)
            msg = CommitMsg(job_id=row.job_id, index=index, commitment="0x" + c.hex(), sig=Sig.of(v, r, s))
            if await self._tell(row, msg):
                self.store.update_job(row.job_id, sent=row.sent | SENT_COMMIT, state="committed")
                ctx.metrics.jobs.labels(state="committed").inc()
        if not committed and deadline - margin <= now <= deadline:
            log.info("job %s: commitment not on chain by deadline - %d s: committing", row.job_id, margin)
            await self.io.send(self.market.commit, jid, row.idx, commitment)
            self.store.update_job(row.job_id, state="committed")
            return
        all_in = view.committed_mask & everyone == everyone
        if committed and not revealed and (all_in or now > deadline):
            if not row.sent & SENT_REVEAL:
                msg2 = RevealMsg(job_id=row.job_id, index=row.idx, result=row.result,  # type: ignore[arg-type]
                                 salt=row.salt,  # type: ignore[arg-type]
                                 outputs=[OutputRef(**o) for o in row.outputs or []])
                if await self._tell(row, msg2):
                    self.store.update_job(row.job_id, sent=row.sent | SENT_REVEAL, state="revealed")
                    ctx.metrics.jobs.labels(state="revealed").inc()
            if now >= deadline + window - margin and now <= deadline + window:
                log.info("job %s: opening not on chain by the window's end - %d s: revealing", row.job_id, margin)
                await self.io.send(self.market.reveal, jid, row.idx, result, salt)
                self.store.update_job(row.job_id, state="revealed")
                return
        if now > deadline + window:
            await self._finalize(row)

    async def _tell(self, row: ProviderJobRow, msg: ResultMsg | CommitMsg | RevealMsg) -> bool:
        """Send a result / commit / reveal message to the requester; True when it acknowledged."""
        try:
            reply = await self.ctx.request_peer(row.requester_addrs, row.requester_peer, RESULT_PROTOCOL,
                                                msg.encode())
            ack: Ack = decode(reply, Ack)
        except (P2PError, ProtocolError) as err:
            log.info("job %s: %s not delivered: %s", row.job_id, msg.type, err)
            return False
        if not ack.ok:
            log.info("job %s: requester refused the %s: %s", row.job_id, msg.type, ack.reason)
        return ack.ok

    async def _finalize(self, row: ProviderJobRow) -> None:
        log.info("job %s: finalizing", row.job_id)
        await self.io.send(self.market.finalize, b32(row.job_id))

    def _settled(self, row: ProviderJobRow, view: JobView) -> None:
        s = view.settlement
        paid = int(s.get("paidMask", 0)) >> row.idx & 1
        slashed = int(s.get("slashedMask", 0)) >> row.idx & 1
        earnings = row.price if paid else (-row.collateral if slashed else 0)
        outcome = view.outcome.name.lower() if view.outcome is not None else "settled"
        share = ":paid" if paid else ":slashed" if slashed else ""
        self.store.update_job(row.job_id, state="settled", outcome=outcome + share, earnings=earnings)
        self.ctx.metrics.jobs.labels(state="settled").inc()
        if earnings > 0:
            self.ctx.metrics.earnings.inc(earnings)
        log.info("job %s settled (%s): %s wei", row.job_id, outcome, earnings)
        if self.ctx.nursery is not None and self.ctx.config.auto_withdraw_wei is not None:
            self.ctx.start_soon(self.maybe_withdraw)

    async def maybe_withdraw(self) -> None:
        """Withdraw the market balance once it reaches `config.auto_withdraw_wei` (when set)."""
        threshold = self.ctx.config.auto_withdraw_wei
        if threshold is None:
            return
        try:
            balance = await self.io.read(self.market.market_balance, self.ctx.address)
            if balance >= threshold and balance > 0:
                await self.io.send(self.market.withdraw, balance)
                log.info("withdrew %s wei of earnings", balance)
        except AgoraError as err:
            log.warning("auto-withdraw failed: %s", err)
