"""Opening: openJob with the chosen bids (escrow, assignment and collateral locks in one transaction), then
telling every winner. What makes a crash here safe: the attempt (first block, salt, then nonce) is recorded
before anything is signed, so `recovery.recover_opened` can tell this openJob's job from any other."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import trio

from marketplace import protocol as P
from marketplace.errors import (
    InsufficientFundsError,
    JobFailedError,
    ReceiptTimeoutError,
    TransactionRevertedError,
)
from marketplace.p2p import P2PError
from marketplace.requester.core import (
    ASSIGN_TIMEOUT_S,
    DEADLINE_SLACK_S,
    OPEN_ATTEMPT,
    BidReceived,
    BidWindow,
    RequesterContext,
    Winner,
    default_out_dir,
    one_line,
)
from marketplace.requester.session import JobSession
from marketplace.spec import JobSpec
from marketplace.types import JobParams, SignedBid, b32, from_wei


class Opening:
    """The open phase of one requester."""

    def __init__(self, ctx: RequesterContext) -> None:
        self.ctx = ctx

    async def open(self, pending: BidWindow, chosen: list[BidReceived], spec: JobSpec, spec_json: bytes,
                   out: Path | None, t0: float) -> JobSession:
        """Open the job with the chosen bids and start its session; raises JobFailedError (the row says
        whether anything may still open)."""
        ctx = self.ctx
        ann = pending.ann
        bids = [r.signed for r in chosen if r.signed is not None]
        now = await ctx.chain.next_block_time()
        # The block that includes openJob is later than `now`: the deadline keeps slack over each runSeconds.
        deadline = now + ann.run_seconds + DEADLINE_SLACK_S
        caps = [b.bid.max_deadline for b in bids if b.bid.max_deadline]
        if caps and min(caps) < deadline:
            deadline = max(min(caps), now + max(b.bid.run_seconds for b in bids) + DEADLINE_SLACK_S // 2)
        params = JobParams(spec_hash=b32(ann.spec_hash), salt=os.urandom(32), deadline=deadline,
                           window=ann.window, replicas=pending.k, budget=0)
        t_open = time.time()
        attempt = await self.record_attempt(ann.ann_id, params)
        # "opening": from here a crash may leave a job open on chain that the store does not know yet;
        # `recover_opened` finds it again from the JobOpened log whose id is keccak(us, this salt, its block).
        ctx.store.update_job(ann.ann_id, state="opening")
        try:
            job_id, tx = await ctx.chain.send(self.send_open, ann.ann_id, params, bids, attempt)
        except (TransactionRevertedError, InsufficientFundsError) as err:
            # Definite: reverted in simulation, refused by the node, or mined and reverted. Nothing opened.
            ctx.store.update_job(ann.ann_id, state="failed", error=f"open job: {err}")
            raise JobFailedError(f"opening the job failed: {err}") from None
        except Exception as err:  # noqa: BLE001 - no receipt, RPC gone: the transaction may still be mined
            raise self._uncertain(ann.ann_id, attempt, err) from None
        hex_id = "0x" + job_id.hex()
        winners = [Winner(index=i, provider=r.signed.bid.provider, peer=r.peer,  # type: ignore[union-attr]
                          price=r.signed.bid.price, collateral=r.signed.bid.collateral)  # type: ignore[union-attr]
                   for i, r in enumerate(chosen)]
        out_dir = out or default_out_dir(hex_id)
        ctx.store.update_job(ann.ann_id, job_id=hex_id, state="open", winners=[w.to_json() for w in winners],
                             out_dir=str(out_dir))
        ctx.store.merge_json(ann.ann_id, "timings", {"open_tx_s": round(time.time() - t_open, 3),
                                                     "opened_s": round(time.time() - t0, 3)})
        ctx.store.merge_json(ann.ann_id, "gas", {"open": tx.gas_used})
        session = JobSession(ctx, ann_id=ann.ann_id, job_id=job_id, spec=spec, spec_json=spec_json, k=pending.k,
                             deadline=deadline, window=ann.window, winners=winners, out_dir=out_dir, t0=t0)
        session.start()
        ctx.progress(f"opened job {hex_id} (gas {tx.gas_used:,}); winners "
                     + ", ".join(f"{w.provider} at {from_wei(w.price)}" for w in winners))
        # Tell every winner before returning (a submit without --wait exits right after); bounded, since a
        # provider that misses Assigned still finds its assignment on chain.
        with trio.move_on_after(ASSIGN_TIMEOUT_S):
            async with trio.open_nursery() as tell:
                for w in winners:
                    msg = P.Assigned(ann=ann.ann_id, job_id=hex_id, index=w.index, block=tx.block, tx=tx.tx_hash)
                    tell.start_soon(self.assign, w, msg)
        return session

    async def record_attempt(self, ann_id: str, params: JobParams) -> dict[str, Any]:
        """Record, before the row says "opening", what tells this openJob's job from any other: the block it
        cannot be mined before and the salt (job id = keccak(requester, salt, block)). Without them a recovery
        could adopt an older job of the same spec. Nothing is sent yet, so a failure here fails the row."""
        ctx = self.ctx
        try:
            block = (await ctx.chain.head()).number
        except Exception as err:  # noqa: BLE001 - any RPC failure: nothing was sent
            ctx.store.update_job(ann_id, state="failed", error=f"open job: reading the chain: {one_line(err)}")
            raise JobFailedError(f"opening the job failed before anything was sent: {one_line(err)}") from None
        attempt: dict[str, Any] = {"from_block": block, "salt": "0x" + params.salt.hex()}
        ctx.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        return attempt

    def send_open(self, ann_id: str, params: JobParams, bids: list[SignedBid],
                  attempt: dict[str, Any]) -> tuple[bytes, Any]:
        """openJob, with the nonce it is signed with recorded first (a worker thread under the account's
        transaction lock): the nonce tells a transaction still pending from one replaced or dropped."""
        attempt["nonce"] = self.ctx.market.client.next_nonce()  # the nonce transact() will sign
        self.ctx.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        return self.ctx.market.open_job(params, bids)

    def _uncertain(self, ann_id: str, attempt: dict[str, Any], err: BaseException) -> JobFailedError:
        """openJob failed without a definite revert. If it never reached signing, the row fails (nothing
        sent); otherwise it stays "opening" with the transaction hash when known, for `recover_opened`."""
        what = one_line(err)
        if "nonce" not in attempt:
            self.ctx.store.update_job(ann_id, state="failed", error=f"open job: {what}")
            return JobFailedError(f"opening the job failed before openJob was sent: {what}")
        tx = err.tx_hash if isinstance(err, ReceiptTimeoutError) else getattr(err, "tx_hash", None)
        if tx:
            attempt["tx"] = tx
            self.ctx.store.merge_json(ann_id, "timings", {OPEN_ATTEMPT: attempt})
        self.ctx.store.update_job(ann_id, error=f"open job: {what}")
        return JobFailedError(f"openJob {tx or '(hash unknown)'} has no receipt ({what}): the job may still open; "
                              f"`agora job resume` (or rerunning the pipeline) will find it")

    async def assign(self, w: Any, msg: Any) -> bool:
        """Tell a winner (anything with `peer` and `provider`) its assignment (`Assigned`, or `CollabAssigned`)
        on /agora/assign/1, three tries; True when it acknowledged. A provider that misses a job's Assigned
        still finds the assignment on chain (JobAssigned)."""
        for attempt in range(3):
            try:
                reply = P.decode(await self.ctx.request(w.peer, P.ASSIGN_PROTOCOL, msg.encode(), timeout=10), P.Ack)
                if not reply.ok:
                    self.ctx.progress(f"provider {w.provider} refused assignment: {reply.reason}")
                return bool(reply.ok)
            except (P2PError, P.ProtocolError) as err:
                self.ctx.progress(f"assign to {w.provider} (try {attempt + 1}): {err}")
                await trio.sleep(1 + attempt)
        return False

