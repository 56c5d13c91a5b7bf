"""A requester that lost track of an openJob never pays twice: `opening_verdict` as a table (pure policy), then
the real `Requester` on a real anvil deployment (no provider nodes: the jobs are opened through the engine's own
`_open` / `_send_open`, the older job through `Market`).

What each chain test pins down:
- openJob without a receipt (automine off): `_open` keeps the row "opening" with the transaction hash and raises
  JobFailedError; `recover_opened` leaves it "opening" while the transaction is pending, adopts the job once mined,
  and never the older job of the same spec hash and requester (which the store does not know either).
- A process that died right after sending openJob: `recover_opened` adopts exactly the job it opened.
- openJob dropped from the pool: the row fails ("nothing was paid"), again without adopting the older job;
  `resume_sync` reports it.
- A definite revert fails the row at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

trio = pytest.importorskip("trio")
pytest.importorskip("libp2p")

from libp2p.crypto.secp256k1 import create_new_key_pair  # noqa: E402

from marketplace import protocol as P  # noqa: E402
from marketplace.blobs import BlobStore  # noqa: E402
from marketplace.client import ChainClient  # noqa: E402
from marketplace.devchain import rpc_call  # noqa: E402
from marketplace.market import Market  # noqa: E402
from marketplace.requester import JobFailedError, Requester, RequesterStore, resume_sync  # noqa: E402
from marketplace.requester.core import OPEN_ATTEMPT, BidReceived, BidWindow  # noqa: E402
from marketplace.requester.ranking import Offer  # noqa: E402
from marketplace.requester.recovery import OpeningFacts, opening_verdict  # noqa: E402
from marketplace.spec import parse_spec  # noqa: E402
from marketplace.types import JobParams, to_wei  # noqa: E402

CHAIN = [pytest.mark.integration, pytest.mark.timeout(120)]
TX = "0x" + "ab" * 32


# ---------------------------------------------------------------------------------------------- the decision
@pytest.mark.parametrize(("facts", "verdict", "says"), [
    (OpeningFacts(matched="0x01", attempt=True, nonce=4, latest_nonce=5, pending_nonce=5), "adopt", "opened job"),
    (OpeningFacts(attempt=True, nonce=4, tx=TX, receipt_status=0, latest_nonce=5, pending_nonce=5), "failed",
     "reverted"),
    (OpeningFacts(attempt=True, nonce=4, tx=TX, receipt_status=1, latest_nonce=5, pending_nonce=5), "opening",
     "not readable yet"),
    (OpeningFacts(attempt=True, nonce=4, tx=TX, tx_pending=True, latest_nonce=4, pending_nonce=5), "opening",
     "still pending"),
    (OpeningFacts(attempt=True, nonce=None, latest_nonce=4, pending_nonce=4), "failed", "before openJob was sent"),
    (OpeningFacts(attempt=True, nonce=4, tx=TX, latest_nonce=5, pending_nonce=5), "failed", "replaced or dropped"),
    (OpeningFacts(attempt=True, nonce=4, latest_nonce=4, pending_nonce=5), "opening", "nonce 4 is pending"),
    (OpeningFacts(attempt=True, nonce=4, tx=TX, latest_nonce=4, pending_nonce=4), "failed", "dropped"),
    (OpeningFacts(attempt=True, nonce=4, latest_nonce=4, pending_nonce=4), "failed", "dropped"),  # hash unknown
    (OpeningFacts(latest_nonce=7, pending_nonce=8), "opening", "pending"),  # a row without an attempt record
    (OpeningFacts(latest_nonce=7, pending_nonce=7), "failed", "never opened"),
])
def test_opening_verdict_fails_a_row_only_when_the_chain_proves_nothing_can_open(
        facts: OpeningFacts, verdict: str, says: str) -> None:
    got, why = opening_verdict(facts)
    assert got == verdict and says in why, (got, why)


# ---------------------------------------------------------------------------------------------- on anvil
def _market(stack: Any) -> Market:
    """The requester's account with a 1 s receipt timeout (an openJob that is not mined at once has no
    receipt), and its own nonce cache: every transaction of these tests goes through it."""
    stack.requester.client._nonce = None  # noqa: SLF001 - the stack's client must re-read after these tests
    return Market(ChainClient(stack.w3, stack.deployment, account=stack.requester.client.account,
                              receipt_timeout=1))


def _spec(seed: int) -> Any:
    blob = "sha256:" + f"{seed:02x}" * 32
    return parse_spec({"version": 1, "kind": "inference", "data": {"inputs": blob},
                       "model": {"arch": "mlp@1", "params": {"in_features": 8, "hidden": [4], "out_features": 2}},
                       "limits": {"wall_seconds": 30}})


def _announce(req: Requester, store: RequesterStore, stack: Any, market: Market, spec: Any) -> tuple[Any, Any]:
    """What `choose` leaves behind for one winner: the row (announced, the bid stored as chosen), the pending
    announcement and the chosen bid. Returns (pending, chosen)."""
    spec_hash = "0x" + spec.spec_hash().hex()
    ts = int(time.time() * 1000)
    ann = P.Announce(chain_id=req.chain_id, market=stack.deployment.market, requester=market.address,
                     requester_peer=str(req.node.peer_id), requester_addrs=req.node.addrs[:8], spec_hash=spec_hash,
                     kind="inference", device="cpu", replicas=1, max_price=str(to_wei(1)), run_seconds=120,
                     window=60, input_bytes=0, ts_ms=ts, bid_until_ms=ts + 1000,
                     nonce="0x" + os.urandom(16).hex()).signed(market.client.account)
    store.add_job(ann_id=ann.ann_id, announcement=ann.model_dump(mode="json"), spec_hash=spec_hash, spec_path=None,
                  k=1, max_price=to_wei(1))
    provider = stack.providers[0]
    signed = stack.make_bid(provider, spec.spec_hash(), 0.5, 10, run_seconds=60, requester=market)
    row = store.add_bid(ann_id=ann.ann_id, provider=provider.address, peer="16Uiu2peer", price=signed.bid.price,
                        collateral=signed.bid.collateral, status="chosen", code=None, reason="", offer={})
    pending = BidWindow(ann=ann, k=1, max_price=to_wei(1), min_collateral=0, chain_ts=stack.now(), wall_ts=time.time())
    offer = Offer(provider=provider.address, price=signed.bid.price, collateral=signed.bid.collateral, order=0)
    return pending, [BidReceived(offer=offer, signed=signed, peer="16Uiu2peer", bid_row=row)]


def _older_job(stack: Any, market: Market, spec: Any) -> str:
    """A job of the same requester and spec hash opened earlier, that this store does not know."""
    bid = stack.make_bid(stack.providers[1], spec.spec_hash(), 0.25, 10, requester=market)
    return "0x" + stack.open_job(bids=[bid], requester=market).job_id.hex()


def _with_requester(stack: Any, tmp: Path, market: Market, body: Any) -> Any:
    store = RequesterStore(tmp / "requester.db")

    async def main() -> Any:
        async with Requester.open(market, store=store, blobs=BlobStore(tmp / "blobs"),
                                  key=create_new_key_pair()) as req:
            return await body(req, store)

    return trio.run(main), store


def _automine(stack: Any, on: bool) -> None:
    rpc_call(stack.rpc_url, "evm_setAutomine", [on])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_open_without_receipt_stays_opening_then_adopts_its_own_job_not_an_older_one(stack: Any,
                                                                                     tmp_path: Path) -> None:
    market, spec = _market(stack), _spec(1)
    older = _older_job(stack, market, spec)
    me = market.address
    funds_before = market.token_balance(me) + market.market_balance(me)

    async def body(req: Requester, store: RequesterStore) -> tuple[Any, Any, str | None]:
        pending, chosen = _announce(req, store, stack, market, spec)
        ann_id = pending.ann.ann_id
        _automine(stack, False)
        try:
            with pytest.raises(JobFailedError, match="the job may still open"):
                await req.opening.open(pending, chosen, spec, spec.canonical_json(), tmp_path / "out", time.time())
            stuck = store.job(ann_id)
            assert await trio.to_thread.run_sync(req.recover_opened, stuck) is None
            still = store.job(ann_id)
        finally:
            _automine(stack, True)
        rpc_call(stack.rpc_url, "evm_mine")
        return stuck, still, await trio.to_thread.run_sync(req.recover_opened, store.job(ann_id))

    (stuck, still, adopted), store = _with_requester(stack, tmp_path, market, body)
    attempt = stuck.timings[OPEN_ATTEMPT]
    assert stuck.state == "opening" and stuck.job_id is None and attempt["tx"].startswith("0x")
    assert "no receipt" in (stuck.error or "")
    assert still.state == "opening" and "still pending" in (still.error or "")
    assert adopted is not None and adopted != older
    row = store.job(adopted)
    assert row is not None and row.state == "open" and row.ann_id == stuck.ann_id
    assert [(w["provider"], w["peer"], int(w["price"])) for w in row.winners] == [
        (stack.providers[0].address, "16Uiu2peer", to_wei(0.5))]
    view = market.job(adopted)
    assert view.job.spec_hash == spec.spec_hash() and view.history[0]["tx"] == attempt["tx"]
    assert market.token_balance(me) + market.market_balance(me) == funds_before - to_wei(0.5)  # one job, not two


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_crash_right_after_sending_open_job_is_recovered_exactly(stack: Any, tmp_path: Path) -> None:
    """The engine's own steps up to the transaction (attempt recorded, row "opening", openJob sent), then the
    process 'dies' before recording the id: recovery adopts that job, not the older one of the same spec."""
    market, spec = _market(stack), _spec(2)
    older = _older_job(stack, market, spec)

    async def body(req: Requester, store: RequesterStore) -> tuple[str, str | None]:
        pending, chosen = _announce(req, store, stack, market, spec)
        ann_id = pending.ann.ann_id
        params = JobParams(spec_hash=spec.spec_hash(), salt=os.urandom(32), deadline=stack.now() + 600, window=60,
                           replicas=1, budget=0)
        attempt = await req.opening.record_attempt(ann_id, params)
        store.update_job(ann_id, state="opening")
        job_id, _ = await req.chain.send(req.opening.send_open, ann_id, params, [chosen[0].signed], attempt)
        return "0x" + job_id.hex(), await trio.to_thread.run_sync(req.recover_opened, store.job(ann_id))

    (opened, adopted), store = _with_requester(stack, tmp_path, market, body)
    assert adopted == opened and opened != older
    assert store.job(opened).state == "open"  # type: ignore[union-attr]
    assert store.job(older) is None


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_dropped_open_job_fails_the_row_and_adopts_nothing(stack: Any, tmp_path: Path) -> None:
    market, spec = _market(stack), _spec(3)
    _older_job(stack, market, spec)
    block = stack.w3.eth.block_number

    async def body(req: Requester, store: RequesterStore) -> str:
        pending, chosen = _announce(req, store, stack, market, spec)
        _automine(stack, False)
        try:
            with pytest.raises(JobFailedError, match="the job may still open"):
                await req.opening.open(pending, chosen, spec, spec.canonical_json(), tmp_path / "out", time.time())
            tx = store.job(pending.ann.ann_id).timings[OPEN_ATTEMPT]["tx"]  # type: ignore[union-attr]
            rpc_call(stack.rpc_url, "anvil_dropTransaction", [tx])
        finally:
            _automine(stack, True)
        market.client._nonce = None  # noqa: SLF001 - the dropped transaction's nonce is free again
        return pending.ann.ann_id

    ann_id, store = _with_requester(stack, tmp_path, market, body)
    assert store.job(ann_id).state == "opening"  # type: ignore[union-attr]
    result = resume_sync(market, store=store, blobs=BlobStore(tmp_path / "blobs"), key=create_new_key_pair(),
                         job=ann_id, timeout=30)
    row = store.job(ann_id)
    assert row is not None and row.state == "failed" and row.job_id is None
    assert "dropped" in (row.error or "") and "nothing was paid" in row.error
    assert result["jobs"][ann_id] == {"state": "failed", "error": row.error}
    assert stack.w3.eth.block_number == block  # nothing was mined for it


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_definite_revert_fails_the_row_at_once(stack: Any, tmp_path: Path) -> None:
    market, spec = _market(stack), _spec(4)

    async def body(req: Requester, store: RequesterStore) -> str:
        pending, chosen = _announce(req, store, stack, market, spec)
        expired = stack.make_bid(stack.providers[0], spec.spec_hash(), 0.5, 10, run_seconds=60, requester=market,
                                 expiry_in=-60)
        chosen[0].signed = expired
        with pytest.raises(JobFailedError, match="MarketBidExpired"):
            await req.opening.open(pending, chosen, spec, spec.canonical_json(), tmp_path / "out", time.time())
        return pending.ann.ann_id

    ann_id, store = _with_requester(stack, tmp_path, market, body)
    row = store.job(ann_id)
    assert row is not None and row.state == "failed" and "MarketBidExpired" in (row.error or "")
    assert "nonce" in row.timings[OPEN_ATTEMPT]  # it got as far as signing; the simulation refused it


class _CrashingStore(RequesterStore):
    """Dies (as a SIGKILL would, for this purpose) when a job is about to become final: what is on disk at that
    moment is what a restarted requester finds."""

    def update_job(self, ann_id: str, **changes: Any) -> None:
        if changes.get("state") in ("settled", "failed"):
            raise KeyboardInterrupt("killed")
        super().update_job(ann_id, **changes)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_settlement_file_is_written_before_the_state_and_outputs_in_place_count(stack: Any, tmp_path: Path) -> None:
    """Killed between settlement.json and the final state: the file is there and the row is not final, so a
    restart settles it again, and outputs already verified in place are kept without asking any provider."""
    import numpy as np

    from marketplace.requester.core import Winner
    from marketplace.requester.session import JobSession
    from marketplace.results import ResultManifest, write_outputs
    from marketplace.tensorhash import tensor_hash
    from marketplace.types import Outcome

    market, spec = _market(stack), _spec(5)
    out = tmp_path / "out"
    tensors = {"logits": np.ones((4, 2), dtype=np.float32)}
    result = tensor_hash(tensors).hex
    ResultManifest(spec_hash="0x" + spec.spec_hash().hex(), status="ok", result_hash=result,
                   outputs=write_outputs(out, tensors)).write(out)  # fetched and verified before the crash
    view = type("View", (), {"outcome": Outcome.COMPLETED, "settled": True,
                             "settlement": {"result": bytes.fromhex(result[2:]), "refund": 0, "paidMask": 1,
                                            "slashedMask": 0, "compensation": 0}})()

    def active(req: Requester, ann_id: str) -> Any:
        winner = Winner(index=0, provider=stack.providers[0].address, peer="16Uiu2gone", price=to_wei(0.5),
                         collateral=0)
        return JobSession(req.ctx, ann_id=ann_id, job_id=os.urandom(32), spec=spec, spec_json=spec.canonical_json(),
                          k=1, deadline=0, window=60, winners=[winner], out_dir=out, t0=time.time())

    crashing = _CrashingStore(tmp_path / "requester.db")

    async def first(req: Requester, store: RequesterStore) -> str:
        pending, _ = _announce(req, store, stack, market, spec)
        store.update_job(pending.ann.ann_id, state="open")
        with pytest.raises(KeyboardInterrupt):
            await active(req, pending.ann.ann_id).on_settled(view)
        return pending.ann.ann_id

    async def main_first() -> str:
        async with Requester.open(market, store=crashing, blobs=BlobStore(tmp_path / "blobs"),
                                  key=create_new_key_pair()) as req:
            return await first(req, crashing)

    ann_id = trio.run(main_first)
    store = RequesterStore(tmp_path / "requester.db")
    assert store.job(ann_id).state == "open"  # type: ignore[union-attr]
    written = (out / "settlement.json").read_text()
    assert '"outcome": "completed"' in written and '"outputsVerified": true' in written

    async def again(req: Requester, store: RequesterStore) -> None:
        await active(req, ann_id).on_settled(view)

    _with_requester(stack, tmp_path, market, again)
    row = store.job(ann_id)
    assert row is not None and row.state == "settled" and row.error is None
