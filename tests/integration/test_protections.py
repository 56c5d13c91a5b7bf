"""Protections found by review: bids bound the window and the lock time, no self-dealing, no free reputation,
and a job id is never reused, even when a job settles in the block that opened it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from marketplace.devchain import rpc_call
from marketplace.types import JobParams, Outcome, to_wei

if TYPE_CHECKING:
    from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
W = to_wei


def test_bid_min_window_protects_the_reveal(stack: Stack) -> None:
    """A requester cannot open a window shorter than the provider accepted (too short to reveal in)."""
    s = stack
    spec = os.urandom(32)
    bid = s.make_bid(s.providers[0], spec, min_window=120)
    with s.reverts("MarketWindowTooShort") as err:
        s.requester.open_job(s.params(spec, window=60), [bid])
    assert err.value.error_args["window"] == 60 and err.value.error_args["minWindow"] == 120
    job_id, _ = s.requester.open_job(s.params(spec, window=120), [bid])  # the same bid, honoured
    assert s.requester.job(job_id).status == "assigned"


def test_bid_max_deadline_bounds_the_collateral_lock(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    bid = s.make_bid(s.providers[0], spec, max_deadline=s.now() + 300)
    with s.reverts("MarketDeadlineTooLate"):
        s.requester.open_job(s.params(spec, deadline_in=3600), [bid])
    s.requester.open_job(s.params(spec, deadline_in=200), [bid])


def test_requester_cannot_assign_its_own_bid(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    own = s.make_bid(s.providers[0], spec, requester=s.providers[0])
    with s.reverts("MarketSelfDealing"):
        s.providers[0].open_job(s.params(spec), [own])


def test_unpaid_work_earns_no_reputation(stack: Stack) -> None:
    s = stack
    p = s.providers[0]
    done = s.requester.provider_info(p.address)["jobsDone"]
    job = s.open_job(1, providers=[p], price=0)
    p.submit_result(job.job_id, b"\x42" * 32)
    s.requester.accept(job.job_id)
    assert s.requester.job(job.job_id).outcome == Outcome.COMPLETED
    assert s.requester.provider_info(p.address)["jobsDone"] == done


def test_job_settled_in_its_opening_block_leaves_a_tombstone(stack: Stack) -> None:
    """Open, cancel and re-open with the same salt in ONE block: the re-open fails (the id would repeat)."""
    s = stack
    url = s.requester.client.w3.provider.endpoint_uri
    spec, salt = os.urandom(32), os.urandom(32)
    params = JobParams(spec_hash=spec, salt=salt, deadline=s.now() + 600, window=60, replicas=1, budget=W(1))
    client, market = s.requester.client, s.requester.client.market
    job = (s.requester.address, spec, params.deadline, params.window, 1, 1, W(1), b"\x00" * 32, 0, [], [])
    rpc_call(url, "evm_setAutomine", [False])
    try:
        nonce = client.w3.eth.get_transaction_count(s.requester.address)
        hashes = []
        block = client.w3.eth.block_number + 1
        from marketplace.types import job_id_for

        job_id = job_id_for(s.requester.address, salt, block)
        for i, fn in enumerate([market.functions.openJob(params.as_abi(), []), market.functions.cancel(job_id, job),
                                market.functions.openJob(params.as_abi(), [])]):
            tx = fn.build_transaction({"from": s.requester.address, "nonce": nonce + i, "gas": 400_000,
                                       "chainId": client.chain_id})
            hashes.append(client.w3.eth.send_raw_transaction(client.account.sign_transaction(tx).raw_transaction))
        rpc_call(url, "evm_mine", [])
    finally:
        rpc_call(url, "evm_setAutomine", [True])
    receipts = [client.w3.eth.get_transaction_receipt(h) for h in hashes]
    assert len({r["blockNumber"] for r in receipts}) == 1
    assert [r["status"] for r in receipts] == [1, 1, 0]  # the re-open in the same block reverted
    assert market.functions.jobSlot(job_id).call() == 1  # tombstone
    view = s.requester.job(job_id)
    assert view.settled and view.outcome == Outcome.CANCELLED
