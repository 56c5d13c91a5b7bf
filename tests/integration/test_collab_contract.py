"""CollabMarket on Anvil through marketplace.collab.contract: open, settle, claim, close, withdraw, and every
refusal.

Each failure test asserts the exact custom error and that nothing moved: `Collab.reverts` compares a snapshot
(token balances, collab balances, every job's phase, paid and counts) taken before the call with one taken
after, and checks no block was mined (the wrapper simulates first). The contract's conservation invariant,
token balance of the contract == collab balances + unspent escrow of the jobs not closed, is checked around
every test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from eth_account import Account
from web3 import Web3

from marketplace.collab.contract import (
    CollabContract,
    CollabJobView,
    receipt_digest,
    recover_receipt_signer,
    sign_receipt,
)
from marketplace.collab.contract import job_id_for as py_job_id_for
from marketplace.deployment import Deployment
from marketplace.errors import DeploymentError, InsufficientFundsError, TransactionRevertedError
from marketplace.types import to_wei

if TYPE_CHECKING:
    from conftest import Stack  # tests/integration/conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("conserved")]

W = to_wei
MODEL = b"\x4d" * 32
WINDOW = 60  # the contract's minimum claim window
GAS: dict[str, int] = {}


@dataclass
class Collab:
    """The collab market seen by every actor of the module's stack, plus snapshot and revert helpers."""

    s: Stack
    requester: CollabContract
    providers: list[CollabContract]
    outsider: CollabContract
    pauper: CollabContract
    _opened: list[bytes] = field(default_factory=list)

    @property
    def actors(self) -> dict[str, CollabContract]:
        named = {"requester": self.requester, "outsider": self.outsider, "pauper": self.pauper}
        named.update({f"p{i}": p for i, p in enumerate(self.providers)})
        return named

    def open(self, m: int = 3, *, prices: Sequence[float] | None = None, rounds: int = 4,
             deadline_in: int = 600, window: int = WINDOW, providers: Sequence[str] | None = None,
             salt: bytes | None = None, who: CollabContract | None = None,
             approve: bool = True) -> tuple[bytes, CollabJobView]:
        """Open a job (prices in whole tokens, default 1, 2, 3, ...) and return its id and view."""
        who = who or self.requester
        seats = list(providers) if providers is not None else [p.client.address for p in self.providers[:m]]
        wei = [W(x) for x in (prices if prices is not None else range(1, len(seats) + 1))]
        deadline = self.s.now() + deadline_in
        job_id, tx = who.open(os.urandom(32), salt or os.urandom(32), rounds, deadline, window, seats, wei,
                              approve=approve)
        self._opened.append(job_id)
        GAS[f"open m={len(seats)}"] = tx.gas_used
        return job_id, who.job(job_id)

    def receipt(self, job_id: bytes, provider: CollabContract, count: int, *,
                key: Any = None) -> tuple[Any, ...]:
        """The requester's receipt (or one forged with `key`) for `provider`."""
        signer = key if key is not None else self.requester.client.account
        return sign_receipt(signer, self.s.deployment.chain_id, self.requester.address, job_id,
                            provider.client.address, count)

    def snapshot(self) -> dict[str, Any]:
        token = self.s.token.functions
        snap: dict[str, Any] = {"token:collab": int(token.balanceOf(self.requester.address).call())}
        for name, c in self.actors.items():
            snap[f"token:{name}"] = int(token.balanceOf(c.client.address).call())
            snap[f"collab:{name}"] = self.requester.balance(c.client.address)
        for jid in self._opened:
            v = self.requester.job(jid)
            snap[f"job:{jid.hex()[:8]}"] = (v.phase, v.paid, v.counts, v.claim_end, v.model_hash)
        return snap

    def diff(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
        return {k: after[k] - before[k] for k in after
                if k.startswith(("token:", "collab:")) and after[k] != before[k]}

    def assert_conserved(self) -> None:
        """token(collab) == collab balances of every requester and provider + escrow - paid of every job not
        closed (accounts and jobs found from the CollabOpened events)."""
        logs = self.requester.contract.events.CollabOpened().get_logs(from_block=self.s.deployment.block)
        live, accounts = 0, {c.client.address for c in self.actors.values()}
        for log in logs:
            v = self.requester.job(bytes(log["args"]["jobId"]))
            accounts.update((v.requester, *v.providers))
            if v.phase != "Closed":
                live += v.unspent
        held = int(self.s.token.functions.balanceOf(self.requester.address).call())
        owed = sum(self.requester.balance(a) for a in accounts)
        assert held == owed + live, f"collab conservation broken: holds {held}, owes {owed} + {live} escrow"

    def reverts(self, error_name: str) -> AbstractContextManager[Any]:
        """Expect a project error named `error_name` (one line), with nothing moved and no block mined."""
        return self.s.reverts(error_name, snapshot=self.snapshot,
                              errors=(TransactionRevertedError, InsufficientFundsError), one_line=True)


@pytest.fixture(scope="module")
def cx(stack: Stack) -> Collab:
    chains = {name: CollabContract(m.client) for name, m in stack.actors.items()}
    return Collab(s=stack, requester=chains["requester"], outsider=chains["outsider"],
                  pauper=chains["pauper"],
                  providers=[chains[f"p{i}"] for i in range(len(stack.providers))])


@pytest.fixture
def conserving(cx: Collab) -> list[Any]:
    """The `conserved` fixture (every test here) checks the collab contract and the JobMarket side."""
    return [cx, cx.s]


# ---------------------------------------------------------------- ids, digests, deployment


def test_ids_and_receipts_match_the_contract(cx: Collab) -> None:
    c, fns = cx.requester, cx.requester.contract.functions
    salt, job_id = os.urandom(32), os.urandom(32)
    assert py_job_id_for(c.client.address, salt) == bytes(fns.jobIdFor(c.client.address, salt).call())
    provider = cx.providers[0].client.address
    digest = receipt_digest(cx.s.deployment.chain_id, c.address, job_id, provider, 7)
    assert digest == bytes(fns.receiptDigest(job_id, provider, 7).call())
    assert digest != bytes(fns.receiptDigest(job_id, provider, 8).call())
    sig = c.sign_receipt(job_id, provider, 7)
    signer = recover_receipt_signer(cx.s.deployment.chain_id, c.address, job_id, provider, 7, sig)
    assert signer == c.client.address
    assert c.recover_receipt_signer(job_id, provider, 8, sig) != c.client.address
    assert tuple(fns.bounds().call()) == (60, 30 * 24 * 3600, 365 * 24 * 3600, 64)
    assert fns.token().call() == cx.s.deployment.token
    assert c.job(job_id).phase == "None" and not c.job(job_id).exists


def test_deployment_records_collab_and_old_files_still_load(cx: Collab, tmp_path: Path) -> None:
    d = cx.s.deployment
    assert d.collab is not None and cx.s.w3.eth.get_code(Web3.to_checksum_address(d.collab))
    assert d.collab not in (d.token, d.registry, d.market)
    path = d.save(tmp_path)
    assert Deployment.load(tmp_path, d.chain_id).collab == d.collab
    old = json.loads(path.read_text())
    del old["collab"]
    path.write_text(json.dumps(old))
    legacy = Deployment.load(tmp_path, d.chain_id)
    assert legacy.collab is None and legacy.market == d.market
    client = cx.requester.client
    with pytest.raises(DeploymentError, match="has no CollabMarket; redeploy"):
        CollabContract(type(client)(client.w3, legacy, account=client.account))


# ---------------------------------------------------------------- happy paths


def test_open_settle_close_withdraw(cx: Collab) -> None:
    s, req, (p0, p1, p2) = cx.s, cx.requester, cx.providers[:3]
    before = cx.snapshot()
    job_id, view = cx.open(3, prices=[1, 2, 3], rounds=5)
    escrow = W(30)  # (1 + 2 + 3) x 5
    assert cx.diff(before, cx.snapshot()) == {"token:requester": -escrow, "token:collab": escrow}
    assert view.phase == "Open" and view.requester == req.client.address and view.rounds == 5
    assert view.escrow == escrow and view.paid == 0 and view.counts == (0, 0, 0)
    assert view.providers == tuple(p.client.address for p in (p0, p1, p2))
    assert view.prices == (W(1), W(2), W(3)) and view.claim_window == WINDOW

    before = cx.snapshot()
    tx = req.settle(job_id, MODEL, [5, 4, 0])
    GAS["settle m=3"] = tx.gas_used
    assert cx.diff(before, cx.snapshot()) == {"collab:p0": W(5), "collab:p1": W(8)}
    view = req.job(job_id)
    settled_at = int(s.w3.eth.get_block(tx.block)["timestamp"])
    assert (view.phase, view.paid, view.counts, view.model_hash) == ("Settled", W(13), (5, 4, 0), MODEL)
    assert settled_at < view.deadline and view.claim_end == view.deadline + WINDOW  # settled early
    (log,) = req.contract.events.CollabSettled().process_receipt(tx.receipt)
    assert log["args"]["paid"] == W(13) and list(log["args"]["counts"]) == [5, 4, 0]

    with cx.reverts("CollabNotClosable"):
        cx.outsider.close(job_id)
    s.travel_past(view.claim_end)
    before = cx.snapshot()
    cx.outsider.close(job_id)  # anyone may close
    assert cx.diff(before, cx.snapshot()) == {"collab:requester": W(17)}
    assert req.job(job_id).phase == "Closed"

    before = cx.snapshot()
    p0.withdraw()
    p1.withdraw(W(3))
    req.withdraw(W(17))
    assert cx.diff(before, cx.snapshot()) == {
        "collab:p0": -W(5), "token:p0": W(5), "collab:p1": -W(3), "token:p1": W(3),
        "collab:requester": -W(17), "token:requester": W(17), "token:collab": -W(25)}
    p1.withdraw()  # the rest
    assert req.balance(p1.client.address) == 0
    with cx.reverts("CollabWrongPhase"):
        cx.outsider.close(job_id)


def test_claim_tops_up_a_short_settlement(cx: Collab) -> None:
    req, (p0, p1, p2) = cx.requester, cx.providers[:3]
    job_id, _ = cx.open(3, prices=[1, 2, 3], rounds=3)
    req.settle(job_id, MODEL, [2, 2, 2])  # under-reports p1 and p2
    before = cx.snapshot()
    tx = p1.claim(job_id, 1, 3, cx.receipt(job_id, p1, 3))
    GAS["claim"] = tx.gas_used
    cx.outsider.claim(job_id, 2, 3, cx.receipt(job_id, p2, 3))  # a relayer: the credit still goes to p2
    assert cx.diff(before, cx.snapshot()) == {"collab:p1": W(2), "collab:p2": W(3)}
    view = req.job(job_id)
    assert view.counts == (2, 3, 3) and view.paid == W(2 + 6 + 9)
    (log,) = req.contract.events.ContributionClaimed().process_receipt(tx.receipt)
    assert dict(log["args"]) == {"jobId": job_id, "provider": p1.client.address, "count": 3, "amount": W(2)}
    with cx.reverts("CollabNothingToClaim") as err:  # the same receipt again
        p1.claim(job_id, 1, 3, cx.receipt(job_id, p1, 3))
    assert err.value.error_args == {"index": 1, "count": 3, "recorded": 3}
    with cx.reverts("CollabNothingToClaim"):  # an older, lower receipt
        p0.claim(job_id, 0, 1, cx.receipt(job_id, p0, 1))
    cx.s.travel_past(view.claim_end)
    with cx.reverts("CollabClaimClosed"):  # p0's real receipt, too late
        p0.claim(job_id, 0, 3, cx.receipt(job_id, p0, 3))
    before = cx.snapshot()
    req.close(job_id)
    assert cx.diff(before, cx.snapshot()) == {"collab:requester": W(18) - W(17)}


def test_requester_vanishes_providers_claim_then_close(cx: Collab) -> None:
    s, req, (p0, p1) = cx.s, cx.requester, cx.providers[:2]
    job_id, view = cx.open(2, prices=[2, 5], rounds=4, deadline_in=300)
    r0, r1 = cx.receipt(job_id, p0, 3), cx.receipt(job_id, p1, 1)
    with cx.reverts("CollabClaimNotOpen") as err:
        p0.claim(job_id, 0, 3, r0)
    assert err.value.error_args["opensAfter"] == view.deadline
    s.travel_past(view.deadline)
    before = cx.snapshot()
    p0.claim(job_id, 0, 3, r0)
    cx.outsider.claim(job_id, 1, 1, r1)
    assert cx.diff(before, cx.snapshot()) == {"collab:p0": W(6), "collab:p1": W(5)}
    with cx.reverts("CollabNotClosable") as err:
        cx.outsider.close(job_id)
    assert err.value.error_args["readyAfter"] == view.deadline + WINDOW
    s.travel_past(view.deadline + WINDOW)
    with cx.reverts("CollabClaimClosed"):
        p1.claim(job_id, 1, 2, cx.receipt(job_id, p1, 2))
    with cx.reverts("CollabSettleClosed"):
        req.settle(job_id, MODEL, [4, 4])
    before = cx.snapshot()
    p0.close(job_id)
    assert cx.diff(before, cx.snapshot()) == {"collab:requester": W(28) - W(11)}
    assert req.job(job_id).phase == "Closed"


def test_late_settle_keeps_higher_claims(cx: Collab) -> None:
    """A requester settling after the deadline, once providers have claimed, pays only what is still owed."""
    s, req, p0 = cx.s, cx.requester, cx.providers[0]
    job_id, view = cx.open(2, prices=[1, 1], rounds=4, deadline_in=300)
    s.travel_past(view.deadline)
    p0.claim(job_id, 0, 3, cx.receipt(job_id, p0, 3))
    before = cx.snapshot()
    tx = req.settle(job_id, MODEL, [2, 4])  # p0 already has 3: keeps 3, gets nothing more
    assert cx.diff(before, cx.snapshot()) == {"collab:p1": W(4)}
    after = req.job(job_id)
    assert after.counts == (3, 4) and after.paid == W(7)
    assert after.claim_end == int(s.w3.eth.get_block(tx.block)["timestamp"]) + WINDOW
    s.travel_past(after.claim_end)
    req.close(job_id)


def test_early_settle_cannot_cut_the_claims_short(cx: Collab) -> None:
    """A requester that settles with zero counts long before the deadline and keeps taking rounds cannot close
    (and take the escrow back) before deadline + claimWindow: the receipts it signed meanwhile still pay."""
    s, req, (p0, p1) = cx.s, cx.requester, cx.providers[:2]
    job_id, view = cx.open(2, prices=[1, 2], rounds=4, deadline_in=300)
    escrow = W(12)  # (1 + 2) x 4
    before = cx.snapshot()
    tx = req.settle(job_id, MODEL, [0, 0])
    assert cx.diff(before, cx.snapshot()) == {}
    settled_at = int(s.w3.eth.get_block(tx.block)["timestamp"])
    settled = req.job(job_id)
    assert (settled.phase, settled.paid, settled.counts) == ("Settled", 0, (0, 0))
    assert settled_at + WINDOW < view.deadline  # the old rule would have ended the claims before the deadline
    assert settled.claim_end == settled.claims_end == view.deadline + WINDOW

    # The rounds go on; a claim is accepted at once, before the deadline, once a receipt exists.
    before = cx.snapshot()
    p1.claim(job_id, 1, 1, cx.receipt(job_id, p1, 1))
    assert cx.diff(before, cx.snapshot()) == {"collab:p1": W(2)}
    s.travel_past(settled_at + WINDOW)  # past the claim end the old rule gave
    for moment in ("before the deadline", "after the deadline"):
        with cx.reverts("CollabNotClosable") as err:
            cx.outsider.close(job_id)
        assert err.value.error_args["jobId"] == job_id, moment
        assert err.value.error_args["readyAfter"] == view.deadline + WINDOW, moment
        with cx.reverts("CollabNotClosable"):
            req.close(job_id)  # not the requester either
        s.travel_past(view.deadline)

    # After the deadline, the receipts of the last rounds still pay, sent by the provider or by a relayer.
    before = cx.snapshot()
    p0.claim(job_id, 0, 3, cx.receipt(job_id, p0, 3))
    cx.outsider.claim(job_id, 1, 2, cx.receipt(job_id, p1, 2))
    assert cx.diff(before, cx.snapshot()) == {"collab:p0": W(3), "collab:p1": W(2)}
    assert req.job(job_id).counts == (3, 2) and req.job(job_id).paid == W(7)
    with cx.reverts("CollabWrongPhase"):  # a second settle cannot change anything either
        req.settle(job_id, MODEL, [4, 4])

    s.travel_past(view.deadline + WINDOW)
    with cx.reverts("CollabClaimClosed") as err:
        p1.claim(job_id, 1, 3, cx.receipt(job_id, p1, 3))
    assert err.value.error_args["claimEnd"] == view.deadline + WINDOW
    before = cx.snapshot()
    cx.outsider.close(job_id)
    assert cx.diff(before, cx.snapshot()) == {"collab:requester": escrow - W(7)}
    assert req.job(job_id).phase == "Closed"


# ---------------------------------------------------------------- settle refused


def test_settle_refusals(cx: Collab) -> None:
    req, p0 = cx.requester, cx.providers[0]
    job_id, _ = cx.open(3, rounds=2)
    for intruder in (cx.outsider, p0):
        with cx.reverts("CollabNotRequester") as err:
            intruder.settle(job_id, MODEL, [1, 1, 1])
        assert err.value.error_args == {"caller": intruder.client.address, "requester": req.client.address}
    with cx.reverts("CollabCountTooHigh") as err:
        req.settle(job_id, MODEL, [2, 3, 0])
    assert err.value.error_args == {"index": 1, "count": 3, "rounds": 2}
    for counts in ([1, 1], [1, 1, 1, 1], []):
        with cx.reverts("CollabWrongCountLength"):
            req.settle(job_id, MODEL, counts)
    with cx.reverts("CollabUnknownJob"):
        req.settle(os.urandom(32), MODEL, [1])
    req.settle(job_id, MODEL, [1, 1, 1])
    with cx.reverts("CollabWrongPhase"):  # settle twice
        req.settle(job_id, MODEL, [2, 2, 2])


# ---------------------------------------------------------------- claim refused


def test_claim_refusals(cx: Collab) -> None:
    req, (p0, p1) = cx.requester, cx.providers[:2]
    job_id, _ = cx.open(2, rounds=3)
    req.settle(job_id, MODEL, [1, 1])
    forged = cx.receipt(job_id, p0, 3, key=p0.client.account)  # signed by the provider itself
    with cx.reverts("CollabBadReceiptSignature") as err:
        p0.claim(job_id, 0, 3, forged)
    assert err.value.error_args == {"requester": req.client.address, "signer": p0.client.address}
    with cx.reverts("CollabBadReceiptSignature"):  # signed by an outsider
        p0.claim(job_id, 0, 3, cx.receipt(job_id, p0, 3, key=Account.create()))
    with cx.reverts("CollabBadReceiptSignature"):  # p1's genuine receipt used on p0's seat
        p1.claim(job_id, 0, 3, cx.receipt(job_id, p1, 3))
    with cx.reverts("CollabBadReceiptSignature"):  # a genuine receipt for another count
        p0.claim(job_id, 0, 3, cx.receipt(job_id, p0, 2))
    other_job, _ = cx.open(2, rounds=3)
    with cx.reverts("CollabBadReceiptSignature"):  # a genuine receipt of another job
        p0.claim(job_id, 0, 2, cx.receipt(other_job, p0, 2))
    with cx.reverts("CollabCountTooHigh"):
        p0.claim(job_id, 0, 4, cx.receipt(job_id, p0, 4))
    with cx.reverts("CollabBadIndex") as err:
        p0.claim(job_id, 2, 3, cx.receipt(job_id, p0, 3))
    assert err.value.error_args == {"index": 2, "size": 2}
    with cx.reverts("CollabNothingToClaim"):
        p0.claim(job_id, 0, 1, cx.receipt(job_id, p0, 1))
    with cx.reverts("CollabUnknownJob"):
        p0.claim(os.urandom(32), 0, 1, cx.receipt(job_id, p0, 1))
    with cx.reverts("CollabClaimNotOpen"):  # unsettled, before its deadline
        p0.claim(other_job, 0, 2, cx.receipt(other_job, p0, 2))


# ---------------------------------------------------------------- open refused


def test_open_refusals(cx: Collab) -> None:
    s = cx.s
    a, b = (p.client.address for p in cx.providers[:2])
    with cx.reverts("CollabDuplicateProvider") as err:
        cx.open(providers=[a, b, a], prices=[1, 1, 1])
    assert err.value.error_args == {"provider": a}
    # Same low byte as `a`, different address: the duplicate filter's false positive must not refuse it.
    twin = Web3.to_checksum_address(os.urandom(19) + bytes.fromhex(a[-2:]))
    job_id, view = cx.open(providers=[a, twin], prices=[1, 1], rounds=1)
    assert view.providers == (a, twin)
    with cx.reverts("CollabZeroProvider") as err:
        cx.open(providers=[a, "0x" + "00" * 20], prices=[1, 1])
    assert err.value.error_args == {"index": 1}
    with cx.reverts("CollabZeroRounds"):
        cx.open(rounds=0)
    with cx.reverts("CollabBadProviderCount"):
        cx.open(providers=[], prices=[])
    with cx.reverts("CollabBadProviderCount") as err:
        cx.open(providers=[a, b], prices=[1])
    assert err.value.error_args == {"providers": 2, "prices": 1, "maxProviders": 64}
    many = [Web3.to_checksum_address(os.urandom(20)) for _ in range(65)]
    with cx.reverts("CollabBadProviderCount"):
        cx.open(providers=many, prices=[0] * 65)
    with cx.reverts("CollabDeadlineOutOfBounds"):
        cx.open(deadline_in=-10)
    with cx.reverts("CollabDeadlineOutOfBounds"):
        cx.open(deadline_in=400 * 24 * 3600)
    with cx.reverts("CollabClaimWindowOutOfBounds") as err:
        cx.open(window=59)
    assert err.value.error_args == {"claimWindow": 59, "minClaimWindow": 60, "maxClaimWindow": 30 * 24 * 3600}
    with cx.reverts("CollabClaimWindowOutOfBounds"):
        cx.open(window=30 * 24 * 3600 + 1)
    salt = os.urandom(32)
    first, _ = cx.open(2, salt=salt, rounds=1)
    with cx.reverts("CollabJobExists") as err:
        cx.open(2, salt=salt, rounds=1)
    assert err.value.error_args == {"jobId": first}
    assert py_job_id_for(cx.requester.client.address, salt) == first
    # The same salt from another requester is another job.
    other, _ = cx.open(2, salt=salt, rounds=1, who=cx.outsider)
    assert other != first
    # Everything opened here is closed again, so the module's conservation check also covers the refunds.
    s.travel(600 + WINDOW + 1)
    for jid in (job_id, first, other):
        cx.outsider.close(jid)


def test_open_without_funds(cx: Collab) -> None:
    s = cx.s
    token = s.token.functions
    # No allowance and no approval: the contract refuses with both amounts.
    current = int(token.allowance(cx.outsider.client.address, cx.requester.address).call())
    with cx.reverts("CollabInsufficientAllowance") as err:
        cx.open(2, prices=[1, 1], rounds=10 ** 6, who=cx.outsider, approve=False)
    assert err.value.error_args == {"owner": cx.outsider.client.address, "allowance": current,
                                    "needed": W(2) * 10 ** 6}
    assert "insufficient allowance" in str(err.value)
    # Too few tokens: refused before even the approval is sent.
    with cx.reverts("CollabInsufficientBalance") as err:
        cx.open(2, prices=[1, 1], rounds=1, who=cx.pauper)
    assert err.value.error_args["needed"] == W(2) and err.value.error_args["balance"] == 0
    # Allowance given but tokens missing: the contract's own check.
    cx.pauper.client.transact(token.approve(cx.requester.address, W(2)), action="approve")
    with cx.reverts("CollabInsufficientBalance"):
        cx.open(2, prices=[1, 1], rounds=1, who=cx.pauper, approve=False)
    with cx.reverts("CollabEscrowTooLarge"):
        cx.open(2, prices=[10 ** 9, 10 ** 9], rounds=2 ** 32 - 1, approve=False)


def test_withdraw_refusals(cx: Collab) -> None:
    with pytest.raises(InsufficientFundsError, match="nothing to withdraw"):
        cx.pauper.withdraw()
    with cx.reverts("CollabInsufficientWithdrawable") as err:
        cx.pauper.withdraw(W(1))
    assert err.value.error_args == {"account": cx.pauper.client.address, "available": 0, "requested": W(1)}
    with cx.reverts("CollabZeroAmount"):
        cx.pauper.withdraw(0)


def test_close_refusals(cx: Collab) -> None:
    job_id, view = cx.open(1, rounds=1)
    with cx.reverts("CollabNotClosable") as err:
        cx.outsider.close(job_id)
    assert err.value.error_args["readyAfter"] == view.deadline + WINDOW
    with cx.reverts("CollabUnknownJob"):
        cx.outsider.close(os.urandom(32))
    tx = cx.requester.settle(job_id, MODEL, [1])
    GAS["settle m=1"] = tx.gas_used
    with cx.reverts("CollabNotClosable") as err:
        cx.outsider.close(job_id)
    assert err.value.error_args["readyAfter"] == cx.requester.job(job_id).claim_end
    cx.s.travel_past(cx.requester.job(job_id).claim_end)
    cx.outsider.close(job_id)


# ---------------------------------------------------------------- gas


def test_gas_open_and_settle(cx: Collab, capsys: pytest.CaptureFixture[str]) -> None:
    """Gas of openCollab and settle for m = 1, 3, 4 (first payment to each provider: zero-to-nonzero balances
    are the costly case, so fresh addresses are used as providers)."""
    figures: dict[int, tuple[int, int]] = {}
    for m in (1, 3, 4):
        seats = [Web3.to_checksum_address(os.urandom(20)) for _ in range(m)]
        job_id, _ = cx.open(providers=seats, prices=[1] * m, rounds=10)
        tx = cx.requester.settle(job_id, MODEL, [10] * m)
        figures[m] = (GAS[f"open m={m}"], tx.gas_used)
    with capsys.disabled():
        print("\ncollab gas (m: openCollab, settle):",
              ", ".join(f"m={m}: {o:,}, {st:,}" for m, (o, st) in figures.items()))
    # Each extra provider costs one storage slot at opening and one (new) balance at settlement, no more;
    # settle's fixed part is three zero-to-nonzero words (first balance, the counts word, the model hash).
    assert figures[4][0] - figures[3][0] < 30_000 and figures[4][1] - figures[3][1] < 30_000
    assert figures[4][0] < 250_000 and figures[4][1] < 200_000
