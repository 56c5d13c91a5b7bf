"""Failure paths of every value-moving function, on Anvil.

Each test asserts the exact custom error (via the Market facade's TransactionRevertedError.error_name, or the
amounts of an InsufficientFundsError) and that no balance moved: `stack.reverts` / `stack.insufficient`
compare a full balance snapshot (tokens, market balances, stake, locked, unbonding, reputation) taken before
the call with one taken after. The conservation invariant is checked around every test.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from marketplace.eip712 import sign_commit, sign_result
from marketplace.errors import InsufficientFundsError, TransactionRevertedError
from marketplace.types import Assignment, JobPhase, commitment_for, to_wei

if TYPE_CHECKING:
    from conftest import Opened, Stack  # tests/integration/conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("conserved")]

W = to_wei
RESULT = b"\x42" * 32
OTHER = b"\x43" * 32


def submitted(s: Stack, window: int = 60) -> Opened:
    job = s.open_job(1, window=window)
    job.providers[0].submit_result(job.job_id, RESULT)
    return job


def raw(s: Stack, who, fn_name: str, job_id: bytes, job_tuple, *extra, action: str = "raw"):
    """Call the market directly (bypassing the facade's job rebuild)."""
    fn = getattr(who.client.market.functions, fn_name)(job_id, job_tuple, *extra)
    return who.client.transact(fn, action=action)


# ---------------------------------------------------------------- wrong caller


def test_accept_by_non_requester(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    for intruder in (s.outsider, job.providers[0]):
        with s.reverts("MarketNotRequester") as err:
            intruder.accept(job.job_id)
        assert err.value.error_args == {"caller": intruder.address, "requester": s.requester.address}


def test_dispute_by_non_requester(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    vbids = [s.make_bid(v, job.spec, price=1, collateral=5) for v in s.providers[1:3]]
    with s.reverts("MarketNotRequester"):
        s.outsider.dispute(job.job_id, vbids, s.now() + 600)
    assert not any(s.requester.nonce_used(b.bid.provider, b.bid.nonce) for b in vbids)


def test_cancel_by_non_requester(stack: Stack) -> None:
    s = stack
    job = s.open_job(1, budget=3)
    with s.reverts("MarketNotRequester"):
        s.outsider.cancel(job.job_id)
    assert s.requester.job(job.job_id).job.phase == JobPhase.OPEN


def test_assign_by_non_requester(stack: Stack) -> None:
    s = stack
    job = s.open_job(1, budget=3)
    bid = s.make_bid(s.providers[0], job.spec)
    with s.reverts("MarketNotRequester"):
        s.outsider.assign(job.job_id, [bid])


def test_submit_by_non_assigned_provider(stack: Stack) -> None:
    s, p0, p1 = stack, *stack.providers[:2]
    job = s.open_job(1, providers=[p0])
    with s.reverts("MarketNotAssignedProvider") as err:
        p1.submit_result(job.job_id, RESULT)
    assert err.value.error_args == {"caller": p1.address, "index": 0}
    with s.reverts("MarketNotAssignedProvider"):
        s.requester.submit_result(job.job_id, RESULT)


def test_commit_and_reveal_by_non_assigned_provider(stack: Stack) -> None:
    s = stack
    job = s.open_job(3)
    p3 = s.providers[3]
    with s.reverts("MarketNotAssignedProvider") as err:
        p3.commit(job.job_id, 0, commitment_for(job.job_id, p3.address, RESULT, os.urandom(32)))
    assert err.value.error_args == {"caller": p3.address, "index": 0}
    with s.reverts("MarketNotAssignedProvider") as err:  # index past the last participant
        p3.commit(job.job_id, 3, commitment_for(job.job_id, p3.address, RESULT, os.urandom(32)))
    assert err.value.error_args["index"] == 3
    salts = s.commit_all(job, [RESULT] * 3)
    with s.reverts("MarketNotAssignedProvider"):
        p3.reveal(job.job_id, 0, RESULT, salts[0])
    with s.reverts("MarketNotAssignedProvider"):  # another worker's index
        job.providers[1].reveal(job.job_id, 0, RESULT, salts[0])


# ---------------------------------------------------------------- wrong phase


def test_accept_before_submission(stack: Stack) -> None:
    s = stack
    job = s.open_job(1)
    with s.reverts("MarketWrongPhase") as err:
        s.requester.accept(job.job_id)
    assert err.value.error_args["phase"] == JobPhase.ASSIGNED


def test_submit_twice(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    with s.reverts("MarketWrongPhase") as err:
        job.providers[0].submit_result(job.job_id, OTHER)
    assert err.value.error_args["phase"] == JobPhase.SUBMITTED


def test_dispute_of_replicated_job(stack: Stack) -> None:
    s = stack
    job = s.open_job(3)
    vbids = [s.make_bid(v, job.spec, collateral=1) for v in s.providers[3:5]]
    with s.reverts("MarketWrongPhase") as err:
        s.requester.dispute(job.job_id, vbids, s.now() + 600)
    assert err.value.error_args["phase"] == JobPhase.ASSIGNED


def test_cancel_after_assignment(stack: Stack) -> None:
    s = stack
    job = s.open_job(1)
    with s.reverts("MarketWrongPhase"):
        s.requester.cancel(job.job_id)


def test_commit_on_single_replica_job(stack: Stack) -> None:
    s = stack
    job = s.open_job(1)
    p0 = job.providers[0]
    with s.reverts("MarketWrongPhase"):
        p0.commit(job.job_id, 0, commitment_for(job.job_id, p0.address, RESULT, os.urandom(32)))


def test_settled_job_is_refused(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    live = s.requester.job(job.job_id).job.as_abi()
    s.requester.accept(job.job_id)
    with s.reverts("MarketJobAlreadySettled"):  # the facade refuses from events
        s.requester.accept(job.job_id)
    with s.reverts("MarketUnknownJob"):  # and the contract itself, given the last live job: its slot is gone
        raw(s, s.requester, "accept", job.job_id, live)


def test_unknown_job(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    tup = s.requester.job(job.job_id).job.as_abi()
    with s.reverts("MarketUnknownJob"):
        raw(s, s.outsider, "finalize", os.urandom(32), tup)


# ---------------------------------------------------------------- bids


def test_expired_bid(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    bid = s.make_bid(s.providers[0], spec, expiry_in=-10)
    with s.reverts("MarketBidExpired") as err:
        s.requester.open_job(s.params(spec), [bid])
    assert err.value.error_args["provider"] == s.providers[0].address
    assert err.value.error_args["expiry"] == bid.bid.expiry
    assert err.value.error_args["now"] > bid.bid.expiry


def test_replayed_bid(stack: Stack) -> None:
    s = stack
    job = s.open_job(1)
    bid = job.bids[0]
    with s.reverts("MarketBidNonceUsed") as err:
        s.requester.open_job(s.params(job.spec), [bid])
    assert err.value.error_args == {"provider": bid.bid.provider, "nonce": bid.bid.nonce}


def test_cancelled_nonce(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    spec = os.urandom(32)
    nonce = 0xAB00 + 7
    bid = s.make_bid(p0, spec, nonce=nonce)
    p0.cancel_nonces(nonce >> 8, 1 << (nonce & 0xFF))
    assert s.requester.nonce_used(p0.address, nonce)
    with s.reverts("MarketBidNonceUsed"):
        s.requester.open_job(s.params(spec), [bid])


def test_forged_bid(stack: Stack) -> None:
    s, p0, p1 = stack, *stack.providers[:2]
    spec = os.urandom(32)
    forger_key = p1.client.account.key
    bid = s.make_bid(p0, spec, signer_key=forger_key)
    with s.reverts("MarketBadBidSignature") as err:
        s.requester.open_job(s.params(spec), [bid])
    assert err.value.error_args == {"provider": p0.address, "signer": p1.address}


def test_bid_signed_for_another_chain(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    spec = os.urandom(32)
    bid = s.make_bid(p0, spec, chain_id=1)
    with s.reverts("MarketBadBidSignature") as err:
        s.requester.open_job(s.params(spec), [bid])
    assert err.value.error_args["provider"] == p0.address
    assert err.value.error_args["signer"] != p0.address


def test_bid_signed_for_another_market(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    spec = os.urandom(32)
    bid = s.make_bid(p0, spec, market=s.deployment.registry)
    with s.reverts("MarketBadBidSignature"):
        s.requester.open_job(s.params(spec), [bid])


def test_bid_for_another_spec_or_requester(stack: Stack) -> None:
    s, p0, p1 = stack, *stack.providers[:2]
    spec = os.urandom(32)
    good = s.make_bid(p0, spec)
    wrong_spec = s.make_bid(p1, os.urandom(32))
    with s.reverts("MarketBidMismatch") as err:
        s.requester.open_job(s.params(spec, replicas=2), [good, wrong_spec])
    assert err.value.error_args == {"index": 1, "provider": p1.address}
    for_outsider = s.make_bid(p0, spec, requester=s.outsider)
    with s.reverts("MarketBidMismatch") as err:
        s.requester.open_job(s.params(spec), [for_outsider])
    assert err.value.error_args == {"index": 0, "provider": p0.address}
    # The same bid with a valid setting passes: nothing was consumed by the failures.
    s.requester.open_job(s.params(spec), [good])


def test_duplicate_provider_in_one_job(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    spec = os.urandom(32)
    bids = [s.make_bid(p0, spec), s.make_bid(p0, spec)]
    with s.reverts("MarketDuplicateProvider") as err:
        s.requester.open_job(s.params(spec, replicas=2), bids)
    assert err.value.error_args == {"provider": p0.address}


def test_dispute_verifier_may_not_be_the_worker(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    vbids = [s.make_bid(job.providers[0], job.spec, collateral=1), s.make_bid(s.providers[1], job.spec, collateral=1)]
    with s.reverts("MarketDuplicateProvider"):
        s.requester.dispute(job.job_id, vbids, s.now() + 600)


def test_deadline_too_short_for_bid(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    spec = os.urandom(32)
    bid = s.make_bid(p0, spec, run_seconds=3600)
    with s.reverts("MarketDeadlineTooShort") as err:
        s.requester.open_job(s.params(spec, deadline_in=600), [bid])
    assert err.value.error_args["provider"] == p0.address


@pytest.mark.parametrize(("deadline_in", "window", "name"), [
    (5, 60, "MarketDeadlineOutOfBounds"),
    (31 * 24 * 3600, 60, "MarketDeadlineOutOfBounds"),
    (600, 1, "MarketWindowOutOfBounds"),
    (600, 8 * 24 * 3600, "MarketWindowOutOfBounds"),
])
def test_timing_out_of_bounds(stack: Stack, deadline_in: int, window: int, name: str) -> None:
    s = stack
    spec = os.urandom(32)
    with s.reverts(name):
        s.requester.open_job(s.params(spec, deadline_in=deadline_in, window=window),
                             [s.make_bid(s.providers[0], spec)])


def test_open_job_bad_shape(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    with s.reverts("MarketZeroBudget"):
        s.requester.open_job(s.params(spec, budget=0), [])
    with s.reverts("MarketBadReplicas"):
        s.requester.open_job(s.params(spec, replicas=16, budget=1), [])
    with s.reverts("MarketBadReplicas"):
        s.requester.open_job(s.params(spec, replicas=0, budget=1), [])


def test_job_id_reuse(stack: Stack) -> None:
    s = stack
    params = s.params(os.urandom(32), budget=1)
    s.requester.open_job(params, [])
    with s.reverts("MarketJobExists"):
        s.requester.open_job(params, [])


def test_assign_wrong_count_or_over_budget(stack: Stack) -> None:
    s = stack
    job = s.open_job(1, budget=2)
    with s.reverts("MarketWrongBidCount"):
        s.requester.assign(job.job_id, [s.make_bid(p, job.spec) for p in s.providers[:2]])
    with s.reverts("MarketOverBudget") as err:
        s.requester.assign(job.job_id, [s.make_bid(s.providers[0], job.spec, price=3)])
    assert err.value.error_args == {"total": W(3), "budget": W(2)}


def test_unregistered_provider_bid(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    with s.reverts("RegistryNotRegistered"):
        s.requester.open_job(s.params(spec), [s.make_bid(s.outsider, spec)])


# ---------------------------------------------------------------- funds


def test_insufficient_allowance(stack: Stack) -> None:
    s = stack
    spec = os.urandom(32)
    assert s.outsider.market_balance(s.outsider.address) == 0
    s.outsider.approve(s.deployment.market, W("0.5"))
    bid = s.make_bid(s.providers[0], spec, price=1, requester=s.outsider)
    with s.insufficient("allowance", s.outsider.address, "0.5 AGORA", "needs 1 AGORA"):
        s.outsider.open_job(s.params(spec), [bid])
    with s.insufficient("allowance", "0.5 AGORA", "needs 2 AGORA"):
        s.outsider.deposit(W(2))
    s.outsider.approve(s.deployment.registry, 0)
    with s.insufficient("allowance", "allows 0 AGORA", "needs 500 AGORA"):
        s.outsider.register(W(500), b"\x01\x02", os.urandom(32))


def test_insufficient_token_balance(stack: Stack) -> None:
    s, pauper = stack, stack.pauper
    assert pauper.token_balance(pauper.address) == 0
    pauper.approve(s.deployment.market, W(1000))
    pauper.approve(s.deployment.registry, W(1000))
    spec = os.urandom(32)
    bid = s.make_bid(s.providers[0], spec, price=1, requester=pauper)
    with s.insufficient("balance", pauper.address, "has 0 AGORA", "needs 1 AGORA"):
        pauper.open_job(s.params(spec), [bid])
    with s.insufficient("has 0 AGORA", "needs 7 AGORA"):
        pauper.deposit(W(7))
    with s.insufficient("has 0 AGORA", "needs 100 AGORA"):
        pauper.register(W(100), b"\x01\x02", os.urandom(32))
    with s.insufficient("has 0 AGORA", "needs 3 AGORA"):
        pauper.transfer(s.outsider.address, W(3))


def test_insufficient_free_stake_for_collateral(stack: Stack) -> None:
    s, p4 = stack, stack.providers[4]
    free = int(s.registry.functions.freeStake(p4.address).call())
    spec = os.urandom(32)
    bid = s.make_bid(p4, spec, collateral=free // 10**18 + 1)
    # The facade maps RegistryInsufficientFreeStake to InsufficientFundsError with both amounts.
    with s.insufficient("free stake", p4.address, f"{free // 10**18} AGORA free",
                        f"needs {free // 10**18 + 1} AGORA"):
        s.requester.open_job(s.params(spec), [bid])
    with s.insufficient("free stake", f"needs {free // 10**18 + 1} AGORA"):
        p4.request_unstake(free + W(1))


def test_stake_rules_at_register_and_unstake(stack: Stack) -> None:
    s, outsider, p4 = stack, stack.outsider, stack.providers[4]
    outsider.approve(s.deployment.registry, W(1000))
    with s.reverts("RegistryStakeBelowMinimum") as err:
        outsider.register(W(50), b"\x01\x02", os.urandom(32))
    assert err.value.error_args == {"stake": W(50), "minStake": W(100)}
    with s.reverts("RegistryBadPeerId"):
        outsider.register(W(100), b"", os.urandom(32))
    with s.reverts("RegistryAlreadyRegistered"):
        p4.register(W(100), b"\x01\x02", os.urandom(32))
    with s.reverts("RegistryNotRegistered"):
        outsider.add_stake(W(1))
    with s.reverts("RegistryNotRegistered"):
        outsider.request_unstake(W(1))
    with s.reverts("RegistryZeroAmount"):
        p4.request_unstake(0)
    with s.reverts("RegistryZeroAmount"):
        p4.add_stake(0)
    with s.reverts("RegistryNothingUnbonding"):
        outsider.withdraw_stake()


def test_provider_below_minimum_cannot_take_jobs(stack: Stack) -> None:
    s, p4 = stack, stack.providers[4]
    info = p4.provider_info(p4.address)
    assert info["locked"] == 0
    keep = W(99)
    p4.request_unstake(info["stake"] - keep)
    spec = os.urandom(32)
    with s.reverts("RegistryStakeBelowMinimum") as err:
        s.requester.open_job(s.params(spec), [s.make_bid(p4, spec, collateral=1)])
    assert err.value.error_args == {"stake": keep, "minStake": W(100)}
    p4.approve(s.deployment.registry, info["stake"] - keep)
    p4.add_stake(info["stake"] - keep)  # back to where it was (the unbonding amount stays in the registry)


def test_withdraw_more_than_balance(stack: Stack) -> None:
    s = stack
    outsider = s.outsider
    have = outsider.market_balance(outsider.address)
    with s.insufficient("market balance", f"has {have // 10**18} AGORA", "asked for 5 AGORA"):
        outsider.withdraw(W(5) + have)
    if have == 0:
        with s.insufficient("nothing to withdraw"):
            outsider.withdraw()
    with s.reverts("MarketZeroAmount"):
        outsider.withdraw(0)
    with s.reverts("MarketZeroAmount"):
        outsider.deposit(0)


# ---------------------------------------------------------------- commit / reveal


def test_reveal_with_wrong_salt(stack: Stack) -> None:
    s = stack
    job = s.open_job(3)
    salts = s.commit_all(job, [RESULT] * 3)
    with s.reverts("MarketCommitmentMismatch") as err:
        job.providers[0].reveal(job.job_id, 0, RESULT, os.urandom(32))
    assert err.value.error_args == {"index": 0}
    with s.reverts("MarketCommitmentMismatch"):  # right salt, another result
        job.providers[0].reveal(job.job_id, 0, OTHER, salts[0])
    with s.reverts("MarketZeroResult"):
        job.providers[0].reveal(job.job_id, 0, b"\x00" * 32, salts[0])


def test_reveal_before_all_commits_and_deadline(stack: Stack) -> None:
    s = stack
    job = s.open_job(3)
    salts = s.commit_all(job, [RESULT, RESULT, None])
    with s.reverts("MarketRevealNotOpen") as err:
        job.providers[0].reveal(job.job_id, 0, RESULT, salts[0])
    assert err.value.error_args["deadline"] == job.params.deadline
    with s.reverts("MarketNotCommitted"):
        job.providers[2].reveal(job.job_id, 2, RESULT, salts[2])


def test_commit_twice_reveal_twice_and_late(stack: Stack) -> None:
    s = stack
    job = s.open_job(3, deadline_in=120, window=30)
    p0, p1, p2 = job.providers
    salts = s.commit_all(job, [RESULT, RESULT, None])
    with s.reverts("MarketAlreadyCommitted"):
        p0.commit(job.job_id, 0, commitment_for(job.job_id, p0.address, OTHER, os.urandom(32)))
    with s.reverts("MarketZeroResult"):
        p2.commit(job.job_id, 2, b"\x00" * 32)
    s.travel_past(job.params.deadline)
    with s.reverts("MarketDeadlinePassed"):
        p2.commit(job.job_id, 2, commitment_for(job.job_id, p2.address, RESULT, os.urandom(32)))
    p0.reveal(job.job_id, 0, RESULT, salts[0])
    with s.reverts("MarketAlreadyRevealed"):
        p0.reveal(job.job_id, 0, RESULT, salts[0])
    s.travel_past(job.params.deadline + job.params.window)
    with s.reverts("MarketRevealClosed"):
        p1.reveal(job.job_id, 1, RESULT, salts[1])
    s.outsider.finalize(job.job_id)  # leave nothing live


def test_submit_after_deadline_and_zero_result(stack: Stack) -> None:
    s = stack
    job = s.open_job(1, deadline_in=60)
    p0 = job.providers[0]
    with s.reverts("MarketZeroResult"):
        p0.submit_result(job.job_id, b"\x00" * 32)
    s.travel_past(job.params.deadline)
    with s.reverts("MarketDeadlinePassed"):
        p0.submit_result(job.job_id, RESULT)
    s.outsider.finalize(job.job_id)


# ---------------------------------------------------------------- finalize / dispute windows


def test_finalize_too_early(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    challenge_end = s.requester.job(job.job_id).job.challenge_end
    with s.reverts("MarketNotFinalizable") as err:
        s.outsider.finalize(job.job_id)
    assert err.value.error_args == {"jobId": job.job_id, "phase": JobPhase.SUBMITTED, "readyAt": challenge_end + 1}
    assigned = s.open_job(1)
    with s.reverts("MarketNotFinalizable") as err:
        s.outsider.finalize(assigned.job_id)
    assert err.value.error_args["readyAt"] == assigned.params.deadline + 1
    open_job = s.open_job(1, budget=1)
    with s.reverts("MarketNotFinalizable"):
        s.outsider.finalize(open_job.job_id)
    with s.reverts("MarketNotFinalizable"):  # one unready job fails the whole batch
        s.outsider.finalize_batch([job.job_id, assigned.job_id])


def test_finalize_batch_length_mismatch(stack: Stack) -> None:
    s = stack
    job = submitted(s)
    with s.reverts("MarketLengthMismatch"):
        s.outsider.client.transact(s.market.functions.finalizeBatch([job.job_id, job.job_id],
                                                                    [s.requester.job(job.job_id).job.as_abi()]),
                                   action="finalize batch")


def test_dispute_after_challenge_window(stack: Stack) -> None:
    s = stack
    job = submitted(s, window=20)
    challenge_end = s.requester.job(job.job_id).job.challenge_end
    s.travel_past(challenge_end)
    vbids = [s.make_bid(v, job.spec, collateral=1) for v in s.providers[1:3]]
    with s.reverts("MarketChallengeWindowClosed") as err:
        s.requester.dispute(job.job_id, vbids, s.now() + 600)
    assert err.value.error_args["challengeEnd"] == challenge_end
    s.outsider.finalize(job.job_id)


def test_dispute_too_costly(stack: Stack) -> None:
    s = stack
    job = submitted(s)  # collateral 10
    vbids = [s.make_bid(v, job.spec, price=6, collateral=1) for v in s.providers[1:3]]
    with s.reverts("MarketDisputeTooCostly") as err:
        s.requester.dispute(job.job_id, vbids, s.now() + 600)
    assert err.value.error_args == {"cost": W(12), "collateral": W(10)}
    with s.reverts("MarketBadVerifierCount"):
        s.requester.dispute(job.job_id, vbids[:1], s.now() + 600)


# ---------------------------------------------------------------- signed relays


def test_accept_signed_result_with_wrong_signer(stack: Stack) -> None:
    s = stack
    job = s.open_job(1)
    chain = {"chain_id": s.deployment.chain_id, "market": s.deployment.market}
    forged = sign_result(s.providers[1].client.account, job.job_id, RESULT, **chain)
    with s.reverts("MarketBadResultSignature") as err:
        s.requester.accept_signed_result(job.job_id, RESULT, forged)
    assert err.value.error_args == {"provider": job.providers[0].address, "signer": s.providers[1].address}
    good = sign_result(job.providers[0].client.account, job.job_id, RESULT, **chain)
    with s.reverts("MarketNotRequester"):
        s.outsider.accept_signed_result(job.job_id, RESULT, good)


def test_commit_batch_with_wrong_signer(stack: Stack) -> None:
    s = stack
    job = s.open_job(3)
    chain = {"chain_id": s.deployment.chain_id, "market": s.deployment.market}
    c = commitment_for(job.job_id, job.providers[0].address, RESULT, os.urandom(32))
    forged = sign_commit(s.providers[4].client.account, job.job_id, 0, c, **chain)
    with s.reverts("MarketBadCommitSignature") as err:
        s.outsider.commit_batch(job.job_id, [forged])
    assert err.value.error_args == {"index": 0, "signer": s.providers[4].address}


# ---------------------------------------------------------------- tampering and authorization


@pytest.mark.parametrize("field", ["price", "requester", "window", "phase", "result"])
def test_tampered_job_struct(stack: Stack, field: str) -> None:
    s = stack
    job = submitted(s)
    real = s.requester.job(job.job_id).job
    w = real.workers[0]
    tampered = {
        "price": real.evolve(workers=(Assignment(w.provider, w.price * 100, w.collateral),)),
        "requester": real.evolve(requester=s.outsider.address),
        "window": real.evolve(window=real.window + 1),
        "phase": real.evolve(phase=JobPhase.ASSIGNED),
        "result": real.evolve(result=OTHER),
    }[field]
    who = s.outsider if field == "requester" else s.requester
    with s.reverts("MarketJobMismatch") as err:
        raw(s, who, "accept", job.job_id, tampered.as_abi(), action="accept")
    assert err.value.error_args == {"jobId": job.job_id}
    with s.reverts("MarketJobMismatch"):
        raw(s, s.outsider, "finalize", job.job_id, tampered.as_abi(), action="finalize")


def test_registry_is_market_only(stack: Stack) -> None:
    s = stack
    p0 = s.providers[0].address
    outsider = s.outsider.client
    calls = {
        "lock": outsider.registry.functions.lock(p0, 1),
        "settle": outsider.registry.functions.settle([(p0, W(10), 2)]),
    }
    for action, fn in calls.items():
        with s.reverts("RegistryUnauthorized") as err:
            outsider.transact(fn, action=action)
        assert err.value.error_args == {"caller": s.outsider.address}
    # Even the deployer and the requester are not the market.
    with s.reverts("RegistryUnauthorized"):
        s.requester.client.transact(s.requester.client.registry.functions.settle([(p0, W(10), 2)]),
                                    action="settle")
    with s.reverts("RegistryUnauthorized"):
        s.deployer.client.transact(s.deployer.client.registry.functions.lock(p0, 1), action="lock")
    # The market is fixed at construction, and the deployment really wired the two together.
    assert s.deployer.client.registry.functions.market().call() == s.deployment.market
    assert s.deployer.client.market.functions.registry().call() == s.deployment.registry


def test_faucet_too_much(stack: Stack) -> None:
    s = stack
    fmax = int(s.token.functions.FAUCET_MAX().call())
    with s.reverts("TokenFaucetTooMuch") as err:
        s.outsider.faucet(fmax + 1)
    assert err.value.error_args == {"amount": fmax + 1, "max": fmax}
    assert s.token.functions.faucetEnabled().call() is True


def test_errors_are_catchable_as_builtins(stack: Stack) -> None:
    """The facade's errors subclass the closest builtin (ValueError / RuntimeError)."""
    s = stack
    with pytest.raises(RuntimeError):
        s.outsider.faucet(10**30)
    with pytest.raises(ValueError):
        s.outsider.withdraw(W(10**9))
    assert issubclass(TransactionRevertedError, RuntimeError) and issubclass(InsufficientFundsError, ValueError)
