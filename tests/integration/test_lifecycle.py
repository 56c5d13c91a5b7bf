"""Every way a job can end, on Anvil, with exact token movements and the conservation invariant.

One deployment serves the module (`stack` fixture); each test opens its own jobs with fresh salts and nonces,
compares a balance snapshot taken before the scenario with one taken after, and (autouse fixture) checks
token(market) + token(registry) == live escrow + market balances + stake + unbonding once it is done.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from marketplace.types import JobPhase, Outcome, commitment_for, to_wei

if TYPE_CHECKING:
    from conftest import Stack  # tests/integration/conftest.py (fixtures reach tests through `stack`)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("conserved")]

W = to_wei
RESULT = b"\x42" * 32
WRONG = b"\x66" * 32
OTHER = b"\x43" * 32
THIRD = b"\x44" * 32


def settled(stack: Stack, job_id: bytes, outcome: Outcome) -> dict:
    view = stack.requester.job(job_id)
    assert view.settled and view.outcome == outcome, view.status
    assert stack.market.functions.jobSlot(job_id).call() == 0  # settled slots are deleted (gas refund)
    return view.settlement


def paid_k1(s: Stack, before: dict, price: int = W(1), provider: str = "p0") -> dict:
    """Deltas of a k = 1 job that completed: requester paid `price`, provider earned it, jobsDone + 1."""
    return s.merge(s.pay_in(before, "requester", price), {f"mbal:{provider}": price, f"jobsDone:{provider}": 1})


def slashed(provider: str, collateral: int = W(10)) -> dict:
    """Deltas of `provider` losing `collateral` to the market (the requester's compensation)."""
    return {f"stake:{provider}": -collateral, f"jobsFailed:{provider}": 1, f"timesSlashed:{provider}": 1,
            "token:registry": -collateral, "token:market": collateral}


# ---------------------------------------------------------------- k = 1


def test_k1_accept(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    before = s.balances()
    job = s.open_job(1)
    assert s.requester.job(job.job_id).job.phase == JobPhase.ASSIGNED
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(1)), {"locked:p0": W(10)})
    p0.submit_result(job.job_id, RESULT)
    view = s.requester.job(job.job_id)
    assert view.job.phase == JobPhase.SUBMITTED and view.job.result == RESULT
    s.requester.accept(job.job_id)
    assert s.diff(before, s.balances()) == paid_k1(s, before)
    st = settled(s, job.job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == (RESULT, 1, 0, 0, 0)


def test_k1_timeout_finalize_by_anyone(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    before = s.balances()
    job = s.open_job(1, window=30)
    p0.submit_result(job.job_id, RESULT)
    challenge_end = s.requester.job(job.job_id).job.challenge_end
    s.travel_past(challenge_end)
    s.outsider.finalize(job.job_id)  # neither party: anyone may settle once the window is over
    assert s.diff(before, s.balances()) == paid_k1(s, before)
    assert settled(s, job.job_id, Outcome.COMPLETED)["result"] == RESULT


def _disputed(s: Stack, verifier_result: bytes) -> tuple[dict, dict, bytes]:
    """Open a k = 1 job with p0, submit RESULT, dispute with p1 and p2 (2 tokens each, 5 collateral), and
    have both verifiers commit and reveal `verifier_result`. Returns (before, after-dispute, job id)."""
    p0, p1, p2 = s.providers[:3]
    before = s.balances()
    job = s.open_job(1, providers=[p0])
    p0.submit_result(job.job_id, RESULT)
    opened = s.balances()
    vbids = [s.make_bid(v, job.spec, price=2, collateral=5) for v in (p1, p2)]
    deadline = s.now() + 600
    s.requester.dispute(job.job_id, vbids, deadline)
    disputed = s.balances()
    assert s.diff(opened, disputed) == s.merge(s.pay_in(opened, "requester", W(4)),
                                             {"locked:p1": W(5), "locked:p2": W(5)})
    view = s.requester.job(job.job_id)
    assert view.job.phase == JobPhase.DISPUTED and view.job.deadline == deadline
    assert [a.provider for a in view.job.participants] == [p0.address, p1.address, p2.address]
    salts = s.commit_all(job, [None, verifier_result, verifier_result], participants=[p0, p1, p2])
    p1.reveal(job.job_id, 1, verifier_result, salts[1])
    p2.reveal(job.job_id, 2, verifier_result, salts[2])  # the last expected reveal settles
    return before, opened, job.job_id


def test_k1_dispute_won_by_provider(stack: Stack) -> None:
    s = stack
    before, opened, job_id = _disputed(s, RESULT)
    # The provider is paid, the verifiers are paid out of the requester's dispute escrow.
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(1)), s.pay_in(opened, "requester", W(4)),
        {"mbal:p0": W(1), "mbal:p1": W(2), "mbal:p2": W(2), "jobsDone:p0": 1, "jobsDone:p1": 1, "jobsDone:p2": 1})
    st = settled(s, job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (RESULT, 0b111, 0, 0, 0)


def test_k1_dispute_won_by_requester(stack: Stack) -> None:
    s = stack
    before, opened, job_id = _disputed(s, OTHER)
    # The provider is slashed (collateral to the requester) and not paid (price refunded); verifiers paid.
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(1)), s.pay_in(opened, "requester", W(4)),
        {"mbal:requester": W(1) + W(10), "mbal:p1": W(2), "mbal:p2": W(2), "jobsDone:p1": 1, "jobsDone:p2": 1},
        slashed("p0"))
    st = settled(s, job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (OTHER, 0b110, 0b001, W(1), W(10))


def test_k1_expiry_provider_never_submits(stack: Stack) -> None:
    s = stack
    before = s.balances()
    job = s.open_job(1, deadline_in=120)
    s.travel_past(job.params.deadline)
    s.outsider.finalize(job.job_id)
    # Escrow refunded, collateral slashed to the requester.
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(1)), {"mbal:requester": W(1) + W(10)}, slashed("p0"))
    st = settled(s, job.job_id, Outcome.EXPIRED)
    assert (st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == (0, 1, W(1), W(10))


# ---------------------------------------------------------------- k = 3


def _k3(s: Stack, results: list[bytes]) -> tuple[dict, bytes]:
    before = s.balances()
    job = s.open_job(3)
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(3)),
                                                 {f"locked:p{i}": W(10) for i in range(3)})
    salts = s.commit_all(job, results)
    for i, p in enumerate(job.providers):
        p.reveal(job.job_id, i, results[i], salts[i])
    return before, job.job_id


def test_k3_honest_majority_all_paid(stack: Stack) -> None:
    s = stack
    before, job_id = _k3(s, [RESULT] * 3)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)), *({f"mbal:p{i}": W(1), f"jobsDone:p{i}": 1} for i in range(3)))
    st = settled(s, job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (RESULT, 0b111, 0, 0, 0)


def test_k3_one_liar_slashed(stack: Stack) -> None:
    s = stack
    before, job_id = _k3(s, [RESULT, RESULT, OTHER])
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)),
        {"mbal:p0": W(1), "jobsDone:p0": 1, "mbal:p1": W(1), "jobsDone:p1": 1},
        {"mbal:requester": W(1) + W(10)},  # the liar's price refunded, its collateral as compensation
        slashed("p2"))
    st = settled(s, job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (RESULT, 0b011, 0b100, W(1), W(10))


def test_k3_no_majority_full_refund(stack: Stack) -> None:
    s = stack
    before, job_id = _k3(s, [RESULT, OTHER, THIRD])
    # Everything back to the requester; every collateral released; no reputation change.
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(3)), {"mbal:requester": W(3)})
    st = settled(s, job_id, Outcome.NO_MAJORITY)
    assert (st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == (0, 0, W(3), 0)


def test_k3_no_show_slashed_after_deadline(stack: Stack) -> None:
    s = stack
    before = s.balances()
    job = s.open_job(3, deadline_in=120, window=60)
    salts = s.commit_all(job, [RESULT, RESULT, None])  # p2 never commits
    p0, p1 = job.providers[:2]
    with s.reverts("MarketNotFinalizable") as err:
        s.outsider.finalize(job.job_id)
    assert err.value.error_args["readyAt"] == job.params.deadline + 1
    s.travel_past(job.params.deadline)
    p0.reveal(job.job_id, 0, RESULT, salts[0])
    with s.reverts("MarketNotFinalizable") as err:  # p1 may still reveal until deadline + window
        s.outsider.finalize(job.job_id)
    assert err.value.error_args["readyAt"] == job.params.deadline + job.params.window + 1
    p1.reveal(job.job_id, 1, RESULT, salts[1])  # every commitment opened and the deadline passed: settles
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)),
        {"mbal:p0": W(1), "jobsDone:p0": 1, "mbal:p1": W(1), "jobsDone:p1": 1},
        {"mbal:requester": W(1) + W(10)}, slashed("p2"))
    st = settled(s, job.job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"]) == (RESULT, 0b011, 0b100)


def test_k3_no_show_finalized_after_reveal_window(stack: Stack) -> None:
    """p2 never commits and p1 commits but never reveals: after deadline + window anyone finalizes; one
    revealed result of three is no majority, so p0 is released and refunded and both others are slashed."""
    s = stack
    before = s.balances()
    job = s.open_job(3, deadline_in=120, window=60)
    salts = s.commit_all(job, [RESULT, RESULT, None])
    s.travel_past(job.params.deadline)
    job.providers[0].reveal(job.job_id, 0, RESULT, salts[0])
    s.travel_past(job.params.deadline + job.params.window)
    s.outsider.finalize(job.job_id)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)), {"mbal:requester": W(3) + W(20)}, slashed("p1"), slashed("p2"))
    st = settled(s, job.job_id, Outcome.NO_MAJORITY)
    assert (st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == (0, 0b110, W(3), W(20))


# ---------------------------------------------------------------- open / assign / cancel / batch


def test_open_without_bids_then_assign_refunds_unspent_budget(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    before = s.balances()
    job = s.open_job(1, budget=5)
    opened = s.balances()
    assert s.diff(before, opened) == s.pay_in(before, "requester", W(5))
    view = s.requester.job(job.job_id)
    assert view.job.phase == JobPhase.OPEN and view.job.budget == W(5) and view.job.escrow == W(5)
    s.requester.assign(job.job_id, [s.make_bid(p0, job.spec, price=1)])
    assert s.diff(opened, s.balances()) == {"mbal:requester": W(4), "locked:p0": W(10)}
    assigned = [h for h in s.requester.job(job.job_id).history if h["event"] == "JobAssigned"]
    assert assigned[0]["args"]["refund"] == W(4)
    p0.submit_result(job.job_id, RESULT)
    s.requester.accept(job.job_id)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(5)), {"mbal:requester": W(4), "mbal:p0": W(1), "jobsDone:p0": 1})


def test_cancel_before_assignment(stack: Stack) -> None:
    s = stack
    before = s.balances()
    job = s.open_job(3, budget=7)
    s.requester.cancel(job.job_id)
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(7)), {"mbal:requester": W(7)})
    st = settled(s, job.job_id, Outcome.CANCELLED)
    assert st["refund"] == W(7)


def test_finalize_batch_after_challenge_windows(stack: Stack) -> None:
    s = stack
    before = s.balances()
    jobs = [s.open_job(1, providers=[p], window=20) for p in s.providers[:3]]
    for j in jobs:
        j.providers[0].submit_result(j.job_id, RESULT)
    ids = [j.job_id for j in jobs]
    with s.reverts("MarketNotFinalizable"):
        s.outsider.finalize_batch(ids)
    s.travel_past(max(s.requester.job(i).job.challenge_end for i in ids))
    jobs_abi = [s.requester.job(i).job.as_abi() for i in ids]
    assert s.market.functions.finalizeBatch(ids, jobs_abi).call({"from": s.outsider.address}) == 3
    s.outsider.finalize_batch(ids)
    for i in ids:
        settled(s, i, Outcome.COMPLETED)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)), *({f"mbal:p{i}": W(1), f"jobsDone:p{i}": 1} for i in range(3)))


# ---------------------------------------------------------------- money out


def test_withdraw_earnings(stack: Stack) -> None:
    s, p0 = stack, stack.providers[0]
    job = s.open_job(1, price=3)
    p0.submit_result(job.job_id, RESULT)
    s.requester.accept(job.job_id)
    before = s.balances()
    earned = before["mbal:p0"]
    assert earned >= W(3)
    p0.withdraw(W(1))
    assert s.diff(before, s.balances()) == {"mbal:p0": -W(1), "token:p0": W(1), "token:market": -W(1)}
    p0.withdraw()  # everything left
    assert s.diff(before, s.balances()) == {"mbal:p0": -earned, "token:p0": earned, "token:market": -earned}
    assert p0.market_balance(p0.address) == 0


def test_requester_withdraws_refunds(stack: Stack) -> None:
    s = stack
    job = s.open_job(1, budget=2)
    s.requester.cancel(job.job_id)
    before = s.balances()
    refunds = before["mbal:requester"]
    assert refunds >= W(2)
    s.requester.withdraw()
    assert s.diff(before, s.balances()) == {"mbal:requester": -refunds, "token:requester": refunds,
                                            "token:market": -refunds}


def test_unstake_with_unbonding_delay(stack: Stack) -> None:
    s, p5 = stack, stack.providers[5]
    delay = int(s.registry.functions.unbondingDelay().call())
    before = s.balances()
    s.providers[5].request_unstake(W(100))
    requested = s.balances()
    assert s.diff(before, requested) == {"stake:p5": -W(100), "unbonding:p5": W(100)}
    ready_at = requested["unbondingReadyAt:p5"]
    assert ready_at >= s.now() + delay - 1
    with s.reverts("RegistryStillUnbonding") as err:
        p5.withdraw_stake()
    assert err.value.error_args["readyAt"] == ready_at
    s.travel_past(ready_at)
    p5.withdraw_stake()
    assert s.diff(before, s.balances()) == {"stake:p5": -W(100), "token:p5": W(100), "token:registry": -W(100)}
    with s.reverts("RegistryNothingUnbonding"):
        p5.withdraw_stake()


def test_deposit_funds_the_next_job(stack: Stack) -> None:
    s = stack
    s.requester.deposit(W(2))
    before = s.balances()
    assert before["mbal:requester"] >= W(2)
    job = s.open_job(1, price=2)
    # Escrow came from the market balance, not from the wallet.
    assert s.diff(before, s.balances()) == {"mbal:requester": -W(2), "locked:p0": W(10)}
    opened = next(h for h in s.requester.job(job.job_id).history if h["event"] == "JobOpened")["args"]
    assert (opened["escrow"], opened["fromBalance"]) == (W(2), W(2))
    s.providers[0].submit_result(job.job_id, RESULT)
    s.requester.accept(job.job_id)


# ---------------------------------------------------------------- reputation


def score(done: int, failed: int, slashed_: int) -> int:
    return 10_000 * (done + 1) // (done + failed + slashed_ + 2)


def test_reputation_counters_and_score(stack: Stack) -> None:
    """p3 is used by no other test of this module: its counters start at zero."""
    s, p3 = stack, stack.providers[3]
    info = p3.provider_info(p3.address)
    assert (info["jobsDone"], info["jobsFailed"], info["timesSlashed"], info["scoreBps"]) == (0, 0, 0, 5000)
    for _ in range(2):
        job = s.open_job(1, providers=[p3])
        p3.submit_result(job.job_id, RESULT)
        s.requester.accept(job.job_id)
    info = p3.provider_info(p3.address)
    assert (info["jobsDone"], info["jobsFailed"], info["timesSlashed"]) == (2, 0, 0)
    assert info["scoreBps"] == score(2, 0, 0) == 7500
    job = s.open_job(1, providers=[p3], deadline_in=60)
    s.travel_past(job.params.deadline)
    s.outsider.finalize(job.job_id)  # expired: slashed
    info = p3.provider_info(p3.address)
    assert (info["jobsDone"], info["jobsFailed"], info["timesSlashed"]) == (2, 1, 1)
    assert info["scoreBps"] == score(2, 1, 1) == 5000
    assert tuple(s.registry.functions.reputation(p3.address).call()) == (2, 1, 1, 5000)
    assert info["stake"] == W(490) and info["locked"] == 0


def test_no_majority_leaves_reputation_unchanged(stack: Stack) -> None:
    s = stack
    reps = [tuple(s.registry.functions.reputation(p.address).call()) for p in s.providers[:3]]
    _k3(s, [RESULT, OTHER, THIRD])
    assert [tuple(s.registry.functions.reputation(p.address).call()) for p in s.providers[:3]] == reps


def test_job_ids_are_salted_per_requester(stack: Stack) -> None:
    from marketplace.types import job_id_for

    s = stack
    salt = os.urandom(32)
    params = s.params(os.urandom(32), budget=1, salt=salt)
    job_id, result = s.requester.open_job(params, [])
    assert job_id == job_id_for(s.requester.address, salt, result.block)
    s.requester.cancel(job_id)
    # The same salt later gives a new id: a settled id is never reused, so no signature over it can be replayed.
    job_id2, result2 = s.requester.open_job(params.__class__(**{**params.__dict__, "deadline": s.now() + 600}), [])
    assert job_id2 == job_id_for(s.requester.address, salt, result2.block) != job_id
    s.requester.cancel(job_id2)


def test_finalize_batch_skips_settled_jobs(stack: Stack) -> None:
    """finalizeBatch skips jobs already settled (IJobMarket); the facade must let such ids through."""
    s = stack
    before = s.balances()
    jobs = [s.open_job(1, providers=[p], window=20) for p in s.providers[:2]]
    for j in jobs:
        j.providers[0].submit_result(j.job_id, RESULT)
    s.requester.accept(jobs[0].job_id)
    s.travel_past(s.requester.job(jobs[1].job_id).job.challenge_end)
    s.outsider.finalize_batch([j.job_id for j in jobs])
    settled(s, jobs[1].job_id, Outcome.COMPLETED)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(2)), *({f"mbal:p{i}": W(1), f"jobsDone:p{i}": 1} for i in range(2)))


def test_event_escrow_matches_rebuilt_jobs(stack: Stack) -> None:
    """The conservation check's escrow (from events) equals the sum of the facade's rebuilt live jobs."""
    s = stack
    s.open_job(1, budget=2)
    s.open_job(3)
    live = s.live_jobs()
    assert live
    assert s.live_escrow() == sum(s.requester.job(i).job.escrow for i in live)


def test_open_job_unassigned_past_deadline_is_cancelled_by_anyone(stack: Stack) -> None:
    s = stack
    before = s.balances()
    job = s.open_job(2, budget=4, deadline_in=60)
    s.travel_past(job.params.deadline)
    s.outsider.finalize(job.job_id)
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(4)), {"mbal:requester": W(4)})
    assert settled(s, job.job_id, Outcome.CANCELLED)["refund"] == W(4)


def test_relayed_paths_signed_result_commit_batch_reveal_batch(stack: Stack) -> None:
    from marketplace.eip712 import sign_commit, sign_result
    from marketplace.types import commitment_for

    s = stack
    domain = {"chain_id": s.deployment.chain_id, "market": s.deployment.market}
    before = s.balances()
    # k = 1: the requester pays at once with the provider's signed result (no submitResult transaction).
    job = s.open_job(1)
    s.requester.accept_signed_result(job.job_id, RESULT,
                                     sign_result(job.providers[0].client.account, job.job_id, RESULT, **domain))
    assert settled(s, job.job_id, Outcome.COMPLETED)["result"] == RESULT
    # k = 3: the requester posts every signed commitment, an outsider opens them all in one transaction.
    job3 = s.open_job(3)
    salts = [os.urandom(32) for _ in range(3)]
    commits = [sign_commit(p.client.account, job3.job_id, i, commitment_for(job3.job_id, p.address, RESULT, salts[i]),
                           **domain) for i, p in enumerate(job3.providers)]
    s.requester.commit_batch(job3.job_id, commits)
    s.outsider.reveal_batch(job3.job_id, [(i, RESULT, salts[i]) for i in range(3)])
    assert settled(s, job3.job_id, Outcome.COMPLETED)["paidMask"] == 0b111
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(4)), {"mbal:p0": W(2), "jobsDone:p0": 2},
        {"mbal:p1": W(1), "jobsDone:p1": 1, "mbal:p2": W(1), "jobsDone:p2": 1})


def test_dispute_with_absent_verifiers(stack: Stack) -> None:
    """Burden of proof on the challenger: when no verifier of a dispute reveals, the original result stands. The
    worker is paid, the absent verifiers are slashed to the requester and their fees refunded, so disputing with
    verifiers that never show up gets a requester nothing for free."""
    s = stack
    p0, p1, p2 = s.providers[:3]
    before = s.balances()
    job = s.open_job(1, providers=[p0])
    p0.submit_result(job.job_id, RESULT)
    opened = s.balances()
    deadline = s.now() + 120
    s.requester.dispute(job.job_id, [s.make_bid(v, job.spec, price=2, collateral=5) for v in (p1, p2)], deadline)
    s.travel_past(deadline + job.params.window)
    s.outsider.finalize(job.job_id)
    st = settled(s, job.job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (RESULT, 0b001, 0b110, W(4), W(10))
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(1)), s.pay_in(opened, "requester", W(4)),
        {"mbal:requester": W(4) + W(10), "mbal:p0": W(1), "jobsDone:p0": 1},
        slashed("p1", W(5)), slashed("p2", W(5)))


def test_dispute_split_verifiers_leave_the_original_standing(stack: Stack) -> None:
    """The verifiers disagree with the worker and with each other: no majority against the original, so it stands
    and the worker is paid; both verifiers revealed, so they are released (not paid, not slashed) and their fees
    go back to the requester."""
    s = stack
    p0, p1, p2 = s.providers[:3]
    job = s.open_job(1, providers=[p0])
    p0.submit_result(job.job_id, RESULT)
    deadline = s.now() + 120
    s.requester.dispute(job.job_id, [s.make_bid(v, job.spec, price=2, collateral=5) for v in (p1, p2)], deadline)
    salts = [os.urandom(32), os.urandom(32)]
    p1.commit(job.job_id, 1, commitment_for(job.job_id, p1.address, OTHER, salts[0]))
    p2.commit(job.job_id, 2, commitment_for(job.job_id, p2.address, THIRD, salts[1]))
    before = s.balances()
    p1.reveal(job.job_id, 1, OTHER, salts[0])
    p2.reveal(job.job_id, 2, THIRD, salts[1])
    st = settled(s, job.job_id, Outcome.COMPLETED)
    assert (st["result"], st["paidMask"], st["slashedMask"], st["refund"], st["compensation"]) == \
        (RESULT, 0b001, 0, W(4), 0)
    d = s.diff(before, s.balances())
    assert d["mbal:p0"] == W(1) and d["mbal:requester"] == W(4)
    assert all(not k.endswith((":p1", ":p2")) or k.startswith("locked:") for k in d), d
