"""Bid ranking policy: reputation weighting, on-chain refusals, explanations and the no-bids summary."""

from __future__ import annotations

from marketplace.requester.ranking import Explanation, Offer, ProviderFacts, effective_price, rank
from marketplace.types import to_wei

A, B, C = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40
MAX = to_wei(1)


def facts(score: int = 10_000, stake: float = 100, locked: float = 0, registered: bool = True) -> ProviderFacts:
    return ProviderFacts(registered=registered, stake=to_wei(stake), locked=to_wei(locked), unbonding=0,
                         score_bps=score)


def offer(who: str, price: float, order: int, collateral: float = 10, **kw: str) -> Offer:
    return Offer(provider=who, price=to_wei(price), collateral=to_wei(collateral), order=order, **kw)  # type: ignore[arg-type]


def test_half_reputation_must_be_half_price_to_tie() -> None:
    assert effective_price(to_wei(0.5), 5_000) == effective_price(to_wei(1), 10_000)
    assert effective_price(to_wei(1), 0) == to_wei(1) * 10_000  # score 0 counts as 1 bps, never divides by 0


def test_cheaper_but_less_reputable_loses_and_ties_go_to_the_earlier_bid() -> None:
    ex = rank([offer(A, 0.6, 0), offer(B, 0.8, 1), offer(C, 0.8, 2)],
              {A: facts(5_000), B: facts(10_000), C: facts(10_000)}, 1, max_price=MAX)
    assert ex.ok and ex.winners == [B]
    by = {b.provider: b for b in ex.bids}
    assert by[B].reason.startswith("chosen: cheapest reputation-weighted price #1 of 3")
    assert by[C].rank == 2 and by[C].reason.startswith("outranked")
    assert by[A].rank == 3 and by[A].effective_price == str(to_wei(1.2))


def test_k_winners_in_rank_order() -> None:
    ex = rank([offer(A, 0.9, 0), offer(B, 0.5, 1), offer(C, 0.7, 2)], {A: facts(), B: facts(), C: facts()}, 2,
              max_price=MAX)
    assert ex.winners == [B, C]
    assert ex.summary == f"chose 2 of 3 bid(s): {B} at 0.5, {C} at 0.7"


def test_unregistered_and_short_of_free_stake_are_refused() -> None:
    ex = rank([offer(A, 0.5, 0), offer(B, 0.5, 1, collateral=50)],
              {A: facts(registered=False), B: facts(stake=100, locked=60)}, 1, max_price=MAX)
    assert not ex.ok
    by = {b.provider: b for b in ex.bids}
    assert by[A].refusal == "unregistered" and by[B].refusal == "stake"
    assert "free stake 40 is below the bid's collateral 50" in by[B].reason
    assert ex.summary.startswith("no acceptable bids: 2 bids: ")


def test_no_acceptable_bids_summary_names_prices() -> None:
    offers = [offer(A, 2.5, 0, refusal="price"), offer(B, 3.0, 1, refusal="price")]
    ex = rank(offers, {}, 1, max_price=MAX)
    assert not ex.ok and ex.winners == []
    assert ex.summary == "no acceptable bids: 2 bids, both ask more than max price 1 (2.5, 3)"


def test_summary_singular_empty_and_partial() -> None:
    one = rank([offer(A, 0.5, 0, refusal="signature")], {}, 1, max_price=MAX)
    assert one.summary == "no acceptable bids: 1 bid, it carries a bad signature"
    none = rank([], {}, 1, max_price=MAX, window_s=2)
    assert none.summary == "no acceptable bids: no bids arrived within the 2 s bid window"
    partial = rank([offer(A, 0.5, 0), offer(B, 2, 1, refusal="price")], {A: facts()}, 2, max_price=MAX)
    assert not partial.ok
    assert partial.summary == "only 1 acceptable bid(s) for 2 replicas: 2 bids: 1 ask more than max price 1 (2)"


def test_explanation_round_trips_json() -> None:
    ex = rank([offer(A, 0.5, 0)], {A: facts(9_000)}, 1, max_price=MAX)
    again = Explanation.from_json(ex.to_json())
    assert again == ex and again.winners == [A]
