"""One opened job, from opening to settlement: result, commit and reveal intake (over /agora/result/1),
batching (one commitBatch, one revealBatch), watching the chain, finalizing past deadlines, fetching and
checking outputs, and settlement.json. Also the requester's one chain poller that wakes the sessions."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import trio
from eth_account import Account

from marketplace import protocol as P
from marketplace.eip712 import COMMIT_TYPES, typed_digest
from marketplace.errors import AgoraError
from marketplace.fsutil import atomic_write_json
from marketplace.jobs import JobView
from marketplace.p2p import P2PError
from marketplace.requester.core import POLL_S, SETTLE_MARGIN_S, WATCH_S, RequesterContext, Winner
from marketplace.results import MANIFEST_FILE, OUTPUTS_FILE, ResultManifest, verify_result_dir
from marketplace.spec import JobSpec
from marketplace.types import b32, commitment_for

log = logging.getLogger(__name__)


class JobSession:
    """An opened job this requester serves until it settles. `start()` registers it and starts its watcher."""

    def __init__(self, ctx: RequesterContext, *, ann_id: str, job_id: bytes, spec: JobSpec, spec_json: bytes, k: int,
                 deadline: int, window: int, winners: list[Winner], out_dir: Path, t0: float) -> None:
        self.ctx = ctx
        self.ann_id = ann_id
        self.job_id = job_id
        self.spec = spec
        self.spec_json = spec_json
        self.k = k
        self.deadline = deadline
        self.window = window
        self.winners = winners
        self.out_dir = out_dir
        self.t0 = t0  # wall time of the announcement (timings are relative to it)
        self.settled = trio.Event()
        self.poke = trio.Event()  # set when our own transaction, a log of this job or a deadline changed it
        self.lock = trio.Lock()
        self.cache: dict[str, bytes] = {}  # inputs served to the winners
        self.commits: dict[int, tuple[Any, ...]] = {}
        self.commits_posted = False
        self.reveals: dict[int, tuple[int, bytes, bytes]] = {}
        self.reveal_refs: dict[int, tuple[str, list[dict[str, Any]]]] = {}
        self.result_fetched = False
        self.outcome: str | None = None
        self.error: str | None = None

    @property
    def hex_id(self) -> str:
        return "0x" + self.job_id.hex()

    def winner_by_peer(self, peer: str) -> Winner | None:
        return next((w for w in self.winners if w.peer == peer), None)

    def start(self) -> None:
        self.ctx.sessions[self.hex_id] = self
        self.ctx.nursery.start_soon(self.watch)

    async def wait(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Until the job settles (or `timeout` s); returns its settlement.json content."""
        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            await self.settled.wait()
        return json.loads((self.out_dir / "settlement.json").read_text())

    # ------------------------------------------------------------------ intake
    async def on_message(self, msg: P.ResultMsg | P.CommitMsg | P.RevealMsg, winner: Winner, peer: str) -> P.Ack:
        """A result (k = 1), commitment or opening from one of the winners."""
        row = self.ctx.store.job(self.ann_id)
        if not (row and "first_result_s" in row.timings):
            self.ctx.store.merge_json(self.ann_id, "timings", {"first_result_s": round(time.time() - self.t0, 3)})
        if isinstance(msg, P.ResultMsg):
            if self.k != 1:
                return P.Ack(ok=False, code=P.RejectCode.TYPE, reason="this job uses commit-reveal")
            self.ctx.store.add_result(self.hex_id, msg.result, msg.sig.model_dump(),
                                      [o.model_dump() for o in msg.outputs], peer, "received")
            self.ctx.nursery.start_soon(self.accept, msg, peer)
            return P.Ack(ok=True)
        if isinstance(msg, P.CommitMsg):
            reason = self.take_commit(msg, winner)
        else:
            reason = await self.take_reveal(msg, winner, peer)
        return P.Ack(ok=reason is None, code=None if reason is None else P.RejectCode.WRONG_RESULT, reason=reason or "")

    async def accept(self, msg: P.ResultMsg, peer: str) -> None:
        """k = 1: verify the outputs, then pay with the provider's signed result in one transaction."""
        ctx = self.ctx
        async with self.lock:
            if self.settled.is_set() or self.result_fetched:
                return
            try:
                await self.fetch_outputs(peer, [o.model_dump() for o in msg.outputs], msg.result)
            except (AgoraError, P2PError, OSError) as err:
                self.error = f"result of {self.winners[0].provider} rejected: {err}"
                ctx.store.add_result(self.hex_id, msg.result, msg.sig.model_dump(),
                                     [o.model_dump() for o in msg.outputs], peer, "rejected", str(err))
                ctx.progress(self.error + " (the chain fallback applies: dispute within the window)")
                return
            self.result_fetched = True
            try:
                tx = await ctx.chain.send(ctx.market.accept_signed_result, self.job_id, b32(msg.result),
                                          msg.sig.as_tuple())
            except AgoraError as err:
                ctx.progress(f"acceptSignedResult failed: {err}; the job settles by the chain fallback")
                return
            self.poke.set()
            ctx.store.merge_json(self.ann_id, "gas", {"accept": tx.gas_used})
            ctx.progress(f"accepted result {msg.result[:10]} of job {self.hex_id[:10]} (gas {tx.gas_used:,})")

    def take_commit(self, msg: P.CommitMsg, winner: Winner) -> str | None:
        """Keep a participant's EIP-712 signed commitment for the batch; the reason when refused."""
        if msg.index != winner.index:
            return f"you are participant {winner.index}, not {msg.index}"
        digest = typed_digest(COMMIT_TYPES, {"jobId": self.job_id, "index": msg.index,
                                             "commitment": b32(msg.commitment)},
                              chain_id=self.ctx.chain_id, market=self.ctx.market_address)
        v, r, s = msg.sig.as_tuple()
        try:
            signer = Account._recover_hash(digest, vrs=(v, int.from_bytes(r, "big"), int.from_bytes(s, "big")))
        except Exception:  # noqa: BLE001 - eth_keys raises several types for junk signatures
            return "bad commit signature"
        if signer != winner.provider:
            return f"commit signed by {signer}, not participant {winner.index}"
        self.commits[msg.index] = (msg.index, b32(msg.commitment), v, r, s)
        self.ctx.store.add_commit(self.hex_id, msg.index, msg.commitment, msg.sig.model_dump())
        if len(self.commits) == self.k and not self.commits_posted:
            self.ctx.nursery.start_soon(self.post_commits)
        return None

    async def post_commits(self) -> None:
        """One commitBatch with every commitment not yet on chain."""
        ctx = self.ctx
        async with self.lock:
            if self.commits_posted or not self.commits:
                return
            view = await ctx.chain.read(ctx.market.job, self.job_id)
            fresh = [c for i, c in sorted(self.commits.items()) if not view.committed_mask >> i & 1]
            self.commits_posted = len(self.commits) == self.k
            if not fresh:
                return
            try:
                tx = await ctx.chain.send(ctx.market.commit_batch, self.job_id, fresh)
            except AgoraError as err:
                ctx.progress(f"commitBatch failed: {err}")
                self.commits_posted = False
                return
            ctx.store.mark_posted("commits", self.hex_id, [c[0] for c in fresh])
            ctx.nursery.start_soon(nudge_winners, ctx, self.winners, self.hex_id)
            ctx.store.merge_json(self.ann_id, "gas", {"commit_batch": tx.gas_used})
            ctx.store.update_job(self.ann_id, state="committed")
            ctx.progress(f"posted {len(fresh)} commitment(s) of job {self.hex_id[:10]} (gas {tx.gas_used:,})")

    async def take_reveal(self, msg: P.RevealMsg, winner: Winner, peer: str) -> str | None:
        """Keep an opening that matches the participant's commitment on chain; the reason when refused."""
        if msg.index != winner.index:
            return f"you are participant {winner.index}, not {msg.index}"
        view = await self.ctx.chain.read(self.ctx.market.job, self.job_id)
        onchain = view.commitments.get(msg.index)
        if onchain is None:
            return "no commitment of yours is on chain yet"
        if commitment_for(self.job_id, winner.provider, b32(msg.result), b32(msg.salt)) != bytes(onchain):
            return "the reveal does not open your commitment"
        self.reveals[msg.index] = (msg.index, b32(msg.result), b32(msg.salt))
        self.reveal_refs[msg.index] = (msg.result, [o.model_dump() for o in msg.outputs])
        self.ctx.store.add_reveal(self.hex_id, msg.index, msg.result, msg.salt,
                                  [o.model_dump() for o in msg.outputs], peer)
        committed = {i for i in range(self.k) if view.committed_mask >> i & 1}
        if committed <= set(self.reveals):
            self.ctx.nursery.start_soon(self.post_reveals)
        return None

    async def post_reveals(self) -> None:
        """One revealBatch with every opening not yet on chain."""
        ctx = self.ctx
        async with self.lock:
            view = await ctx.chain.read(ctx.market.job, self.job_id)
            if view.settled:
                return
            fresh = [r for i, r in sorted(self.reveals.items()) if not view.revealed_mask >> i & 1]
            if not fresh:
                return
            try:
                tx = await ctx.chain.send(ctx.market.reveal_batch, self.job_id, fresh)
            except AgoraError as err:
                ctx.progress(f"revealBatch failed: {err}")
                return
            ctx.store.mark_posted("reveals", self.hex_id, [r[0] for r in fresh])
            self.poke.set()
            ctx.store.merge_json(self.ann_id, "gas", {"reveal_batch": tx.gas_used})
            ctx.store.update_job(self.ann_id, state="revealed")
            ctx.progress(f"posted {len(fresh)} reveal(s) of job {self.hex_id[:10]} (gas {tx.gas_used:,})")

    # ------------------------------------------------------------------ watching and settling
    async def watch(self) -> None:
        """Follow the job until it settles: post late batches, finalize past deadlines, fetch outputs."""
        ctx = self.ctx
        while not self.settled.is_set():
            try:
                # The latest block's time, not the next block's: finalize is simulated against the latest block.
                view, now = await ctx.chain.read(lambda: (ctx.market.job(self.job_id), ctx.market.client.timestamp()))
                if view.settled:
                    await self.on_settled(view)
                    return
                await self._step(view, now)
            except AgoraError as err:
                ctx.progress(f"job {self.hex_id[:10]}: {err}")
            with trio.move_on_after(WATCH_S):  # or when poked: our own transaction, a log of this job, a deadline
                await self.poke.wait()
            self.poke = trio.Event()

    async def _step(self, view: JobView, now: int) -> None:
        ctx, job = self.ctx, view.job
        assert job is not None
        end = job.deadline + (job.window if self.k > 1 else 0)
        if job.challenge_end:
            end = max(end, job.challenge_end)
        if self.k > 1 and self.commits and not self.commits_posted and now >= job.deadline - SETTLE_MARGIN_S:
            await self.post_commits()
        if self.k > 1 and self.reveals and now >= end - self.window // 2:
            await self.post_reveals()
        if now > end + SETTLE_MARGIN_S:
            try:
                tx = await ctx.chain.send(ctx.market.finalize, self.job_id)
            except AgoraError as err:
                ctx.progress(f"finalize of {self.hex_id[:10]} failed: {err}")
                return
            ctx.store.merge_json(self.ann_id, "gas", {"finalize": tx.gas_used})
            ctx.progress(f"finalized job {self.hex_id[:10]} past its deadline (gas {tx.gas_used:,})")

    async def on_settled(self, view: Any) -> None:
        """The job settled on chain: fetch and check the outputs (when it completed), write settlement.json,
        then mark the row settled (or failed, with why)."""
        ctx = self.ctx
        outcome = view.outcome.name.lower() if view.outcome is not None else "unknown"
        result = "0x" + bytes(view.settlement.get("result", b"\x00" * 32)).hex()
        self.outcome = outcome
        if outcome == "completed" and not self.result_fetched:
            # A crash after the outputs were moved in (before the state was) must not depend on the provider
            # still serving them: outputs already in place that verify against the settled result count.
            self.result_fetched = await trio.to_thread.run_sync(outputs_in_place, self.out_dir, result)
        if outcome == "completed" and not self.result_fetched:
            await self._fetch_settled(result)
        ctx.store.merge_json(self.ann_id, "timings", {"settled_s": round(time.time() - self.t0, 3)})
        ok = outcome == "completed" and self.result_fetched
        if outcome != "completed":
            self.error = self.error or f"job settled as {outcome}"
        elif not self.result_fetched:
            self.error = self.error or "job settled but its outputs could not be fetched"
        # settlement.json first, the state second: a crash between leaves a row that `resume` settles again
        # (rewriting the file), never a "settled" row whose file a pipeline then cannot find.
        self.write_settlement(view, result)
        ctx.store.update_job(self.ann_id, state="settled" if ok else "failed", error=self.error)
        ctx.progress(f"job {self.hex_id[:10]} settled: {outcome}" + (f" ({self.error})" if self.error else ""))
        self.settled.set()

    async def _fetch_settled(self, result: str) -> None:
        """Fetch the outputs from a provider whose result won (k = 1: the worker)."""
        store = self.ctx.store
        sources: list[tuple[str, list[dict[str, Any]]]] = []
        for i, (res, refs) in sorted(self.reveal_refs.items()):
            if res.lower() == result.lower():
                sources.append((self.winners[i].peer, refs))
        if not sources:
            for _, row in sorted(store.reveals(self.hex_id).items()):
                if row["result"].lower() == result.lower():
                    sources.append((row["peer"], row["outputs"]))
        stored = store.result(self.hex_id)
        if stored and stored["result"].lower() == result.lower():
            sources.append((stored["peer"], stored["outputs"]))
        for peer, refs in sources:
            try:
                await self.fetch_outputs(peer, refs, result)
                self.result_fetched = True
                return
            except (AgoraError, P2PError, OSError) as err:
                self.error = f"fetching outputs from {peer}: {err}"

    async def fetch_outputs(self, peer: str, outputs: list[dict[str, Any]], expect: str) -> None:
        """Fetch outputs + manifest into a staging folder, verify them against `expect`, then move them in."""
        limit = self.spec.limits.output_mb * 1024 * 1024
        stage = self.out_dir / f".incoming-{os.getpid()}-{peer[-8:]}"
        stage.mkdir(parents=True, exist_ok=True)
        try:
            for ref in outputs:
                data = await self.ctx.fetch(peer, self.hex_id, ref["blob"], limit)
                (stage / ref["name"]).write_bytes(data)
            manifest = ResultManifest.read(stage)
            if (manifest.result_hash or "").lower() != expect.lower():
                raise AgoraError(f"manifest result hash {manifest.result_hash} is not {expect}")
            h = await trio.to_thread.run_sync(verify_result_dir, stage)
            if h.hex.lower() != expect.lower():
                raise AgoraError(f"outputs hash to {h.hex}, not {expect}")
            for name in (OUTPUTS_FILE, MANIFEST_FILE):
                os.replace(stage / name, self.out_dir / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def write_settlement(self, view: Any, result: str) -> None:
        row = self.ctx.store.job(self.ann_id)
        s = view.settlement or {}
        doc = {"jobId": self.hex_id, "annId": self.ann_id, "outcome": self.outcome, "result": result,
               "winners": [w.to_json() for w in self.winners],
               "paidMask": s.get("paidMask"), "slashedMask": s.get("slashedMask"),
               "refund": str(s.get("refund", 0)), "compensation": str(s.get("compensation", 0)),
               "gas": row.gas if row else {}, "timings": row.timings if row else {},
               "outputsVerified": self.result_fetched, "error": self.error}
        # Atomically (temp file, fsync, rename): a crash mid-write must not leave a truncated settlement.json.
        atomic_write_json(self.out_dir / "settlement.json", doc)


async def nudge_winners(ctx: RequesterContext, winners: list[Winner], job_id: str) -> None:
    """Hint every winner that the job changed on chain, so it reveals without waiting for its next poll."""
    msg = P.Nudge(job_id=job_id).encode()

    async def one(w: Winner) -> None:
        with contextlib.suppress(P2PError, P.ProtocolError):
            await ctx.request(w.peer, P.ASSIGN_PROTOCOL, msg, timeout=2)

    async with trio.open_nursery() as n:
        for w in winners:
            n.start_soon(one, w)


async def on_result(ctx: RequesterContext, payload: bytes, peer: str) -> bytes:
    """/agora/result/1: route a result, commitment or opening to its job's session."""
    try:
        msg = P.decode(payload, (P.ResultMsg, P.CommitMsg, P.RevealMsg))
    except P.ProtocolError as err:
        return P.Ack.reject(err).encode()
    session = ctx.sessions.get(msg.job_id.lower())
    winner = session.winner_by_peer(peer) if session else None
    if session is None or winner is None:
        return P.Ack(ok=False, code=P.RejectCode.NOT_ASSIGNED,
                     reason="not a provider of a job this requester serves").encode()
    return (await session.on_message(msg, winner, peer)).encode()


async def poll_chain(ctx: RequesterContext) -> None:
    """ONE reader for every open job: each POLL_S, the market's new logs (one eth_getLogs per chunk) poke the
    sessions of the jobs they name, and a job near or past a deadline is poked every round (time alone changes
    what its watcher must do). Per-job polling instead costs 3 RPCs per job per round and starves the event
    loop of a requester with many jobs in flight."""
    follower = ctx.chain.follower(address=ctx.market.client.market.address)
    while True:
        try:
            if ctx.sessions:
                head, logs = await follower.poll()
                touched = {("0x" + bytes(lg["topics"][1]).hex()).lower() for lg in logs if len(lg["topics"]) > 1}
                for job_id, session in list(ctx.sessions.items()):
                    if session.settled.is_set():
                        continue
                    if job_id in touched or head.timestamp >= session.deadline - SETTLE_MARGIN_S:
                        session.poke.set()
            else:
                follower.reset()  # nothing to watch: start from the head again next time
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - an RPC hiccup must not stop the requester
            log.warning("chain poll failed: %s: %s", type(err).__name__, err)
        await trio.sleep(POLL_S)


def outputs_in_place(out_dir: Path, result: str) -> bool:
    """Whether `out_dir` already holds outputs + manifest that verify against the settled `result`."""
    if not (Path(out_dir) / OUTPUTS_FILE).exists() or not (Path(out_dir) / MANIFEST_FILE).exists():
        return False
    try:
        return verify_result_dir(out_dir).hex.lower() == result.lower()
    except AgoraError:
        return False
