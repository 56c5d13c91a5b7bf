"""Which bids win, and why: pure functions over the bids a requester received and the registry's facts.

A bid is screened twice: on arrival (`engine` checks the signature, the peer record, price, collateral, expiry
and deadlines, and keeps a refused bid with its `Refusal`), then here against on-chain facts (registered, free
stake). Acceptable bids rank by effective price = price * 10000 / max(scoreBps, 1): a provider with half the
reputation must ask half the price to tie. Ties go to the earlier bid. No I/O, no clock: unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from marketplace.models import Model, Record
from marketplace.types import from_wei

BPS = 10_000

#: Refusal codes and how the "no acceptable bids" summary words them (plural subject first).
REFUSAL_PHRASES: dict[str, str] = {
    "price": "ask more than max price",
    "collateral": "offer less collateral than",
    "signature": "carry a bad signature",
    "record": "come from a peer not bound to the bidding provider",
    "mismatch": "quote another spec or requester",
    "expiry": "expire too soon",
    "deadline": "do not accept the job's deadline or window",
    "duplicate": "repeat a provider",
    "malformed": "are malformed",
    "unregistered": "come from unregistered providers",
    "stake": "lack free stake for their collateral",
}


@dataclass(frozen=True)
class Offer:
    """One received bid as the ranking sees it; `refusal` is the arrival check's verdict (None = passed)."""

    provider: str
    price: int
    collateral: int
    order: int  # arrival order: ties go to the earlier bid
    refusal: str | None = None  # a REFUSAL_PHRASES code
    reason: str = ""  # the one-line reason given to the provider


@dataclass(frozen=True)
class ProviderFacts:
    """A provider's registry entry (`Market.provider_info`) reduced to what ranking needs."""

    registered: bool
    stake: int
    locked: int
    unbonding: int
    score_bps: int
    jobs_done: int = 0
    jobs_failed: int = 0
    times_slashed: int = 0

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ProviderFacts:
        return cls(registered=bool(info["registered"]), stake=int(info["stake"]), locked=int(info["locked"]),
                   unbonding=int(info.get("unbonding", 0)), score_bps=int(info["scoreBps"]),
                   jobs_done=int(info.get("jobsDone", 0)), jobs_failed=int(info.get("jobsFailed", 0)),
                   times_slashed=int(info.get("timesSlashed", 0)))

    @property
    def free_stake(self) -> int:
        return max(0, self.stake - self.locked - self.unbonding)


class RankedBid(Record):
    """One line of the explanation."""

    provider: str
    price: str  # wei, decimal string
    collateral: str
    order: int
    rank: int | None = None  # 1-based among acceptable bids
    score_bps: int | None = None
    effective_price: str | None = None
    chosen: bool = False
    refusal: str | None = None
    reason: str = ""


class Explanation(Model):
    """Every bid's fate plus a one-line summary; `ok` when k bids were chosen."""

    k: int
    max_price: str
    ok: bool
    summary: str
    bids: list[RankedBid] = Field(default_factory=list)

    @property
    def winners(self) -> list[str]:
        """Chosen providers, best first."""
        return [b.provider for b in sorted((b for b in self.bids if b.chosen), key=lambda b: b.rank or 0)]


def effective_price(price: int, score_bps: int) -> int:
    """price * 10000 / max(scoreBps, 1), in wei (integer division: exact enough to rank, never a float)."""
    return price * BPS // max(score_bps, 1)


def screen(offer: Offer, facts: ProviderFacts | None) -> tuple[str, str] | None:
    """The on-chain refusal (code, reason) of an offer that passed its arrival checks, or None."""
    if facts is None or not facts.registered:
        return "unregistered", f"{offer.provider} is not a registered provider"
    if facts.free_stake < offer.collateral:
        return "stake", (f"free stake {from_wei(facts.free_stake)} is below the bid's collateral "
                         f"{from_wei(offer.collateral)}")
    return None


def rank(offers: Sequence[Offer], facts: Mapping[str, ProviderFacts], k: int, *, max_price: int,
         min_collateral: int = 0, window_s: float | None = None) -> Explanation:
    """Choose the k acceptable offers with the lowest effective price and explain every decision."""
    lines: list[RankedBid] = []
    acceptable: list[tuple[int, int, RankedBid]] = []
    for o in offers:
        line = RankedBid(provider=o.provider, price=str(o.price), collateral=str(o.collateral), order=o.order)
        f = facts.get(o.provider)
        if f is not None:
            line.score_bps = f.score_bps
        verdict = (o.refusal, o.reason) if o.refusal else screen(o, f)
        if verdict is not None:
            line.refusal, line.reason = verdict
        else:
            assert f is not None
            eff = effective_price(o.price, f.score_bps)
            line.effective_price = str(eff)
            acceptable.append((eff, o.order, line))
        lines.append(line)
    acceptable.sort(key=lambda t: (t[0], t[1]))
    for i, (eff, _, line) in enumerate(acceptable):
        line.rank = i + 1
        if i < k:
            assert line.score_bps is not None  # set for every acceptable offer (it has provider facts)
            line.chosen = True
            line.reason = (f"chosen: cheapest reputation-weighted price #{i + 1} of {len(acceptable)} "
                           f"(price {from_wei(int(line.price))} / reputation {line.score_bps / BPS:.2f} = "
                           f"{from_wei(eff)})")
        else:
            line.reason = (f"outranked: effective price {from_wei(eff)} is not among the {k} cheapest "
                           f"(rank {i + 1})")
    ok = len(acceptable) >= k
    if ok:
        summary = f"chose {k} of {len(offers)} bid(s): " + ", ".join(
            f"{ln.provider} at {from_wei(int(ln.price))}" for _, _, ln in acceptable[:k])
    else:
        summary = no_acceptable_summary(offers, lines, k, max_price=max_price, min_collateral=min_collateral,
                                        acceptable=len(acceptable), window_s=window_s)
    return Explanation(k=k, max_price=str(max_price), ok=ok, summary=summary, bids=lines)


def _count_words(n: int) -> str:
    return {1: "it", 2: "both"}.get(n, f"all {n}")


def _detail(code: str, lines: Sequence[RankedBid], *, max_price: int, min_collateral: int) -> str:
    if code == "price":
        prices = ", ".join(from_wei(p) for p in sorted(int(x.price) for x in lines))
        return f"{REFUSAL_PHRASES[code]} {from_wei(max_price)} ({prices})"
    if code == "collateral":
        return (f"{REFUSAL_PHRASES[code]} {from_wei(min_collateral)} "
                f"({', '.join(from_wei(c) for c in sorted(int(x.collateral) for x in lines))})")
    return REFUSAL_PHRASES.get(code, code)


def no_acceptable_summary(offers: Sequence[Offer], lines: Sequence[RankedBid], k: int, *, max_price: int,
                          min_collateral: int = 0, acceptable: int = 0, window_s: float | None = None) -> str:
    """e.g. "no acceptable bids: 2 bids, both ask more than max price 1.0 (2.5, 3.0)"."""
    if not offers:
        within = f" within the {window_s:g} s bid window" if window_s is not None else ""
        return f"no acceptable bids: no bids arrived{within}"
    head = "no acceptable bids" if acceptable == 0 else f"only {acceptable} acceptable bid(s) for {k} replicas"
    refused = [ln for ln in lines if ln.refusal]
    groups: dict[str, list[RankedBid]] = {}
    for ln in refused:
        groups.setdefault(ln.refusal or "", []).append(ln)
    n = len(offers)
    noun = "bid" if n == 1 else "bids"
    if len(groups) == 1 and acceptable == 0:
        code, group = next(iter(groups.items()))
        verb = _detail(code, group, max_price=max_price, min_collateral=min_collateral)
        if n == 1:  # singular verb
            verb = verb.replace("ask ", "asks ", 1).replace("offer ", "offers ", 1).replace("carry ", "carries ", 1)
            verb = verb.replace("come ", "comes ", 1).replace("quote ", "quotes ", 1).replace("expire ", "expires ", 1)
            verb = verb.replace("do not ", "does not ", 1).replace("lack ", "lacks ", 1).replace("are ", "is ", 1)
        return f"{head}: {n} {noun}, {_count_words(n)} {verb}"
    parts = [f"{len(g)} {_detail(c, g, max_price=max_price, min_collateral=min_collateral)}"
             for c, g in sorted(groups.items(), key=lambda t: -len(t[1]))]
    return f"{head}: {n} {noun}: " + "; ".join(parts)
