"""Policy of collaborative training, without a network: which receipts a participant keeps, which updates the
coordinator refuses as copies, when a round stops waiting, and what a rejection reason may carry on the wire."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account

from marketplace.collab.contract import sign_receipt
from marketplace.collab.coordinator import MAX_REASON, CollabCoordinator, Participant, _clean
from marketplace.collab.protocol import Receipt, UpdateMsg
from marketplace.protocol import Sig

pytest.importorskip("trio")

CHAIN_ID, CONTRACT = 31337, "0x" + "ab" * 20
JOB = "0x" + "11" * 32
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
REQUESTER, OTHER, PROVIDER = Account.create(), Account.create(), Account.create()


def participant(rounds: int = 5) -> Any:
    from node.agent.collab import CollabParticipant

    agent = SimpleNamespace(address=PROVIDER.address)
    bid = SimpleNamespace(requester=REQUESTER.address, requester_peer="peer")
    chain = SimpleNamespace(chain_id=CHAIN_ID, address=CONTRACT)
    msg = SimpleNamespace(job_id=JOB, index=0)
    p = CollabParticipant.__new__(CollabParticipant)  # no trio channels needed for the receipt policy
    p.agent, p.bid, p.chain, p.msg = agent, bid, chain, msg  # type: ignore[assignment]
    p.view = SimpleNamespace(rounds=rounds)
    return p


def receipt(signer: Any, count: int, *, flip_s: bool = False, v: int | None = None) -> Receipt:
    vv, r, s = sign_receipt(signer, CHAIN_ID, CONTRACT, bytes.fromhex(JOB[2:]), PROVIDER.address, count)
    if flip_s:  # the same signature in its malleable form: (v ^ 1, r, n - s)
        vv, s = (55 - vv), (N - int.from_bytes(s, "big")).to_bytes(32, "big")
    return Receipt(provider=PROVIDER.address, count=count, sig=Sig.of(v if v is not None else vv, r, s))


def test_a_genuine_receipt_is_kept() -> None:
    assert participant().receipt_problem(receipt(REQUESTER, 3)) is None


@pytest.mark.parametrize(("make", "why"), [
    (lambda: receipt(OTHER, 3), "not the requester"),
    (lambda: receipt(REQUESTER, 6), "above the job's 5 rounds"),
    (lambda: receipt(REQUESTER, 3, flip_s=True), "malleable"),
    (lambda: receipt(REQUESTER, 3, v=1), "malleable"),
])
def test_receipts_the_contract_would_refuse_are_not_kept(make: Any, why: str) -> None:
    problem = participant().receipt_problem(make())
    assert problem is not None and why in problem


def coordinator(model: str = "sha256:" + "0" * 64) -> CollabCoordinator:
    c = CollabCoordinator.__new__(CollabCoordinator)
    c.model, c.seen_updates, c.inbox = model, set(), {}
    c.participants = [Participant(index=i, provider=a, peer=f"p{i}", price=1, shard={"n": 10})
                      for i, a in enumerate(["0x" + "01" * 20, "0x" + "02" * 20, "0x" + "03" * 20])]
    return c


def update(provider: str, blob: str) -> UpdateMsg:
    return UpdateMsg(job_id=JOB, round=1, provider=provider, update=blob, n=10)


def test_copies_are_refused() -> None:
    c = coordinator()
    a, b = c.participants[0].provider, c.participants[1].provider
    fresh = "sha256:" + "aa" * 32
    assert c._copy_problem(update(a, fresh), {a: update(a, fresh)}) is None
    assert "global model" in str(c._copy_problem(update(a, c.model), {}))
    c.seen_updates.add("sha256:" + "bb" * 32)
    assert "earlier round" in str(c._copy_problem(update(a, "sha256:" + "bb" * 32), {}))
    both = {a: update(a, fresh), b: update(b, fresh)}
    assert "same update" in str(c._copy_problem(both[a], both))
    assert "same update" in str(c._copy_problem(both[b], both))


def test_a_round_waits_for_participants_counted_on_and_for_someone_when_nobody_is() -> None:
    c = coordinator()
    p0, p1, p2 = c.participants
    p2.waiting = False  # missed the last round: not waited for
    c.inbox = {p0.provider.lower(): update(p0.provider, "sha256:" + "aa" * 32)}
    assert not c._all_in()
    c.inbox[p1.provider.lower()] = update(p1.provider, "sha256:" + "bb" * 32)
    assert c._all_in()
    for p in c.participants:
        p.waiting = False
    c.inbox = {}
    assert not c._all_in()  # nobody counted on: not an instant empty round
    c.inbox = {p2.provider.lower(): update(p2.provider, "sha256:" + "cc" * 32)}
    assert c._all_in()


def test_rejection_reasons_are_bounded_printable_ascii() -> None:
    text = _clean("peer said: \u00e9\u00e9\x00\x1b[31m" + "x" * 1000)
    assert len(text) == MAX_REASON and all(32 <= ord(ch) < 127 for ch in text)
