"""The requester: announce a job, collect and rank bids, open it on chain, serve its inputs, collect and verify
results, settle. Trio throughout; chain access goes through the shared `ChainIO` (web3 in worker threads, one
transaction lock per account).

`Requester` is a facade over one module per protocol phase (see `marketplace.requester.core`): `bidding`,
`opening`, `session` (one per opened job), `serving` and `recovery`. One `Requester` owns one libp2p host and
serves every job it opened, so many jobs may run concurrently:

    async with Requester.open(market, store=..., blobs=..., key=..., bootstrap=[...]) as req:
        outcome = await req.submit(spec, k=1, max_price=to_wei(1), wait=True, out_dir=Path("out"))

See docs/market-protocol.md for the message flow this implements and docs/requester.md for the user's view.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID

from marketplace import protocol as P
from marketplace.blobs import BlobStore
from marketplace.chainio import ChainIO
from marketplace.errors import AgoraError, InsufficientFundsError
from marketplace.market import Market
from marketplace.p2p import open_host
from marketplace.requester.bidding import Bidding
from marketplace.requester.core import (
    RUN_SLACK_S,
    BidReceived,
    BidWindow,
    Extension,
    Host,
    RequesterContext,
    SubmitOutcome,
)
from marketplace.requester.opening import Opening
from marketplace.requester.ranking import Explanation
from marketplace.requester.recovery import Recovery
from marketplace.requester.serving import Serving
from marketplace.requester.session import JobSession, on_result, poll_chain
from marketplace.requester.store import JobRow, RequesterStore
from marketplace.spec import JobSpec
from marketplace.types import from_wei

log = logging.getLogger(__name__)


class Requester:
    """A requester bound to one account, one host and one store; build it with `Requester.open`."""

    def __init__(self, market: Market, *, store: RequesterStore, blobs: BlobStore, node: Host,
                 nursery: trio.Nursery, progress: Callable[[str], None] | None = None) -> None:
        self.ctx = RequesterContext(market=market, chain=ChainIO(market.client), store=store, blobs=blobs,
                                    node=node, nursery=nursery,
                                    progress=progress or (lambda msg: log.info("%s", msg)))
        self.bidding = Bidding(self.ctx)
        self.opening = Opening(self.ctx)
        self.serving = Serving(self.ctx)
        self.recovery = Recovery(self.ctx)
        self._served: set[str] = set()  # extension protocols the host serves

    # ------------------------------------------------------------------ what scripts and extensions use
    market = property(lambda self: self.ctx.market)
    chain = property(lambda self: self.ctx.chain)
    store = property(lambda self: self.ctx.store)
    blobs = property(lambda self: self.ctx.blobs)
    node = property(lambda self: self.ctx.node)
    address = property(lambda self: self.ctx.address)
    chain_id = property(lambda self: self.ctx.chain_id)
    progress = property(lambda self: self.ctx.progress)

    @classmethod
    @asynccontextmanager
    async def open(cls, market: Market, *, store: RequesterStore, blobs: BlobStore, key: Any,
                   bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                   progress: Callable[[str], None] | None = None) -> AsyncIterator[Requester]:
        """Start the host (gossip on), serve the market protocols, join the network through `bootstrap`."""
        async with open_host(key=key, listen=listen, gossip=True) as node, trio.open_nursery() as nursery:
            req = cls(market, store=store, blobs=blobs, node=node, nursery=nursery, progress=progress)
            node.serve(P.BID_PROTOCOL, req.bidding.on_bid)
            node.serve(P.BLOB_PROTOCOL, req.serving.on_blob)
            node.serve(P.RESULT_PROTOCOL, req._on_result)
            nursery.start_soon(poll_chain, req.ctx)
            await req._join(list(bootstrap))
            try:
                yield req
            finally:
                nursery.cancel_scope.cancel()

    async def _on_result(self, payload: bytes, peer: ID) -> bytes:
        return await on_result(self.ctx, payload, str(peer))

    async def _join(self, bootstrap: list[str]) -> None:
        if not bootstrap:
            return
        from marketplace.p2p.discovery import maintain_peers

        await self.ctx.nursery.start(maintain_peers, self.ctx.node, bootstrap)

    def register_extension(self, job_id: str, ext: Extension) -> None:
        """Route blob requests of `job_id`, and the messages of `ext.protocol` that name it, to `ext` until
        `unregister_extension`. The host starts serving `ext.protocol` on first use."""
        self.ctx.extensions[job_id.lower()] = ext
        if ext.protocol not in self._served:
            self.ctx.node.serve(ext.protocol, self.serving.on_extension)
            self._served.add(ext.protocol)

    def unregister_extension(self, job_id: str) -> None:
        self.ctx.extensions.pop(job_id.lower(), None)

    async def request(self, peer: str, protocol: str, payload: bytes, *, timeout: float) -> bytes:
        """One request/reply to a provider's peer id over this host."""
        return await self.ctx.request(peer, protocol, payload, timeout=timeout)

    async def fetch(self, peer: str, job_id: str, blob: str, limit: int) -> bytes:
        """A blob from a provider, capped at `limit` bytes and sha256-checked."""
        return await self.ctx.fetch(peer, job_id, blob, limit)

    async def assign(self, winner: Any, msg: Any) -> bool:
        """Tell a winner its assignment (three tries); True when it acknowledged."""
        return await self.opening.assign(winner, msg)

    # ------------------------------------------------------------------ funds
    async def ensure_funds(self, need: int, *, approve: bool) -> None:
        """market balance + min(token balance, allowance) >= need, approving the shortfall with `approve`.
        Raises InsufficientFundsError."""
        market, me, mk = self.market, self.address, self.ctx.market_address
        mbal, tbal, allow = await self.chain.read(
            lambda: (market.market_balance(me), market.token_balance(me), market.allowance(me, mk)))
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
        await self.chain.send(market.ensure_allowance, mk, need - mbal)

    async def withdraw_refunds(self) -> int:
        """Withdraw the whole market balance (refunds, compensation); 0 when there is none."""
        bal = await self.chain.read(self.market.market_balance, self.address)
        if bal:
            await self.chain.send(self.market.withdraw, bal)
        return int(bal)

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
        input_bytes = self.bidding.input_bytes(spec)
        min_run, _max_run, min_window, _max_window = await self.chain.read(
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
        session = await self.opening.open(pending, chosen, spec, spec_json, out, pending.wall_ts)
        outcome = SubmitOutcome(ann_id=pending.ann.ann_id, state="open", explanation=explanation,
                                job_id=session.hex_id, winners=[w.to_json() for w in session.winners],
                                out_dir=str(session.out_dir))
        if wait:
            outcome.settlement = await session.wait()
            row = self.store.job(pending.ann.ann_id)
            outcome.state = row.state if row else "failed"
            outcome.error = session.error
        return outcome

    async def choose(self, *, spec_hash: str, spec_json: bytes, kind: str, device: str, k: int, max_price: int,
                     min_collateral: int, run_seconds: int, window: int, input_bytes: int, bid_window: float,
                     grace: float, peer_wait: float, on_announced: Callable[[str], None] | None = None,
                     out_dir: Path | None = None) -> tuple[BidWindow, Explanation, list[BidReceived]]:
        """Announce a job on its topic, collect bids for the window, rank them: (window, explanation, chosen).
        Shared by single jobs (`submit`) and collaborative training (marketplace.collab.coordinator). Raises
        NoAcceptableBidsError (the job's store row is then "no-bids": nothing was sent to the chain)."""
        return await self.bidding.choose(
            spec_hash=spec_hash, spec_json=spec_json, kind=kind, device=device, k=k, max_price=max_price,
            min_collateral=min_collateral, run_seconds=run_seconds, window=window, input_bytes=input_bytes,
            bid_window=bid_window, grace=grace, peer_wait=peer_wait, on_announced=on_announced, out_dir=out_dir)

    def session(self, job_id: str) -> JobSession:
        """The session of an opened job this requester serves; KeyError if none."""
        return self.ctx.sessions[job_id.lower()]

    async def wait(self, job: JobSession | str, *, timeout: float | None = None) -> dict[str, Any]:
        """Until the job settles (or `timeout` s); returns its settlement.json content."""
        session = self.session(job) if isinstance(job, str) else job
        return await session.wait(timeout=timeout)

    # ------------------------------------------------------------------ resume
    async def resume_job(self, ann_id: str) -> JobSession | None:
        """Serve and watch a stored, opened, unsettled job again (after a restart)."""
        row = self.store.job(ann_id)
        if row is None or row.job_id is None or row.state in ("settled", "no-bids"):
            return None
        if row.job_id in self.ctx.sessions:
            return self.ctx.sessions[row.job_id]
        session = await trio.to_thread.run_sync(self.recovery.load_session, row)
        session.start()
        return session

    def recover_opened(self, row: JobRow) -> str | None:
        """See `Recovery.recover_opened` (runs in a worker thread)."""
        return self.recovery.recover_opened(row)

    async def resume_all(self, job: str | None = None, *, timeout: float | None = None,
                         withdraw: bool = False) -> dict[str, Any]:
        """Serve, watch and settle every unfinished stored job (or `job`), then optionally withdraw refunds:
        {"jobs": {id: settlement or state}, "withdrawn": wei as a string}."""
        store = self.store
        rows = [store.job(job)] if job else store.jobs(unfinished=True)
        if job and rows[0] is None:
            raise AgoraError(f"no job {job} in the requester database {store.path}")
        done: dict[str, Any] = {}
        for row in rows:
            assert row is not None
            if row.job_id is None and row.state == "opening":
                # Adopted ("open"), proven never opened ("failed") or maybe still pending ("opening").
                await trio.to_thread.run_sync(self.recover_opened, row)
                row = store.job(row.ann_id)
                assert row is not None
            if row.job_id is None:
                if row.state == "announced":
                    store.update_job(row.ann_id, state="failed", error="interrupted before the job was opened")
                    row = store.job(row.ann_id)
                    assert row is not None
                done[row.ann_id] = {"state": row.state, "error": row.error}
                continue
            session = await self.resume_job(row.ann_id)
            if session is None:
                done[row.job_id] = {"state": row.state}
                continue
            done[row.job_id] = await session.wait(timeout=timeout)
        refunded = await self.withdraw_refunds() if withdraw else 0
        return {"jobs": done, "withdrawn": str(refunded)}

