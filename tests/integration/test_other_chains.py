"""The same contracts and Python bindings on Ganache and on the Hardhat node: a fresh stack on each, one k = 1
lifecycle (submit, accept, withdraw), one honest k = 3 commit-reveal, one timeout finalize after time travel,
and one decoded custom error, with exact balance changes and the conservation invariant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from marketplace.types import JobPhase, Outcome, to_wei

if TYPE_CHECKING:
    from conftest import Stack  # tests/integration/conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("conserved")]

W = to_wei
RESULT = b"\x42" * 32


@pytest.fixture(scope="module", params=["ganache", "hardhat"])
def other(request: pytest.FixtureRequest) -> Stack:
    s = request.getfixturevalue(f"{request.param}_stack")
    assert s.deployment.chain_id == {"ganache": 1337, "hardhat": 31337}[request.param]
    return s


@pytest.fixture
def conserving(other: Stack) -> list[Stack]:
    """The `conserved` fixture (every test here) checks the other chain's stack."""
    return [other]


def test_k1_accept_and_withdraw(other: Stack) -> None:
    s, p0 = other, other.providers[0]
    before = s.balances()
    job = s.open_job(1, price=2)
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(2)), {"locked:p0": W(10)})
    p0.submit_result(job.job_id, RESULT)
    assert s.requester.job(job.job_id).job.phase == JobPhase.SUBMITTED
    s.requester.accept(job.job_id)
    view = s.requester.job(job.job_id)
    assert view.settled and view.outcome == Outcome.COMPLETED and view.settlement["result"] == RESULT
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(2)),
                                                   {"mbal:p0": W(2), "jobsDone:p0": 1})
    earned = s.balances()
    p0.withdraw()
    assert s.diff(earned, s.balances()) == {"mbal:p0": -earned["mbal:p0"], "token:p0": earned["mbal:p0"],
                                            "token:market": -earned["mbal:p0"]}


def test_k3_honest_majority(other: Stack) -> None:
    s = other
    before = s.balances()
    job = s.open_job(3)
    salts = s.commit_all(job, [RESULT] * 3)
    for i, p in enumerate(job.providers):
        p.reveal(job.job_id, i, RESULT, salts[i])
    view = s.requester.job(job.job_id)
    assert view.settled and view.outcome == Outcome.COMPLETED
    assert (view.settlement["paidMask"], view.settlement["slashedMask"]) == (0b111, 0)
    assert s.diff(before, s.balances()) == s.merge(
        s.pay_in(before, "requester", W(3)), *({f"mbal:p{i}": W(1), f"jobsDone:p{i}": 1} for i in range(3)))


def test_k1_timeout_finalize_after_time_travel(other: Stack) -> None:
    s, p1 = other, other.providers[1]
    before = s.balances()
    job = s.open_job(1, providers=[p1], window=30)
    p1.submit_result(job.job_id, RESULT)
    with s.reverts("MarketNotFinalizable"):
        s.outsider.finalize(job.job_id)
    s.travel_past(s.requester.job(job.job_id).job.challenge_end)
    s.outsider.finalize(job.job_id)
    assert s.diff(before, s.balances()) == s.merge(s.pay_in(before, "requester", W(1)),
                                                   {"mbal:p1": W(1), "jobsDone:p1": 1})


def test_custom_errors_decode(other: Stack) -> None:
    s = other
    job = s.open_job(1, providers=[other.providers[2]])
    with s.reverts("MarketNotRequester") as err:
        s.outsider.accept(job.job_id)
    assert err.value.error_args == {"caller": s.outsider.address, "requester": s.requester.address}
    s.pauper.approve(s.deployment.market, W(1))
    with s.insufficient("has 0 AGORA", "needs 1 AGORA"):
        s.pauper.deposit(W(1))
