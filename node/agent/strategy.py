"""Bidding policy: given a valid announcement and what the node knows about itself, offer or decline.

A strategy is anything with `decide(announce, context) -> Quote | Decline`; it never touches the network or
the chain (the agent gathers `BidContext` first), so it is cheap to test and to replace. `TableStrategy`, the
default, asks the per-kind price from the config table and declines whatever the node cannot honour. A price
above the announcement's maximum is, by default, still offered as a counter-offer (`Quote.counter`): the bid is
signed at our price, so the requester can only accept it at that price, and its explanation can say why no bid
was acceptable instead of hearing nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from marketplace.protocol import Announce

from .config import NodeConfig


@dataclass(frozen=True)
class BidContext:
    """What the node knows when an announcement arrives."""

    free_capacity: int  # job slots not taken
    free_stake: int  # wei: stake - locked collateral (registry), minus collateral of pending bids
    served_kinds: frozenset[str]
    device_class: str  # "cpu" | "cuda"


@dataclass(frozen=True)
class Quote:
    price: int  # wei
    collateral: int  # wei
    run_seconds: int  # the node's estimate, what the bid promises
    min_window: int
    counter: bool = False  # our price is above the announcement's max: an offer the requester may refuse


@dataclass(frozen=True)
class Decline:
    reason: str  # a short label for metrics and logs

    def __bool__(self) -> bool:  # `if decision:` reads as "did we offer"
        return False


class Strategy(Protocol):
    def decide(self, announce: Announce, context: BidContext) -> Quote | Decline: ...


def estimate_run_seconds(input_bytes: int, *, base_s: float, mb_per_s: float) -> int:
    """A deliberately simple estimate: fixed start-up (fetch, sandbox fork, model build) + input size / rate."""
    return max(1, math.ceil(base_s + input_bytes / (mb_per_s * 1024 * 1024)))


class TableStrategy:
    """Prices from `config.prices`, collateral `config.collateral`, one estimate for every kind.

    `margin_s` is added to the estimate before comparing it with the announcement's `run_seconds`: the node
    also needs time to fetch inputs and settle before the deadline.
    """

    def __init__(self, config: NodeConfig, *, margin_s: float | None = None) -> None:
        self.config = config
        self.margin_s = float(config.settle_margin_s if margin_s is None else margin_s)

    def estimate(self, announce: Announce) -> int:
        return estimate_run_seconds(announce.input_bytes, base_s=self.config.estimate_base_s,
                                    mb_per_s=self.config.estimate_mb_per_s)

    def decide(self, announce: Announce, context: BidContext) -> Quote | Decline:
        if announce.kind not in context.served_kinds:
            return Decline("kind")
        if announce.device != context.device_class:
            return Decline("device")
        price = self.config.price_wei(announce.kind)
        over = price > int(announce.max_price)
        if over and not self.config.counter_offers:
            return Decline("price")
        collateral = self.config.collateral_wei
        if collateral < int(announce.min_collateral):
            return Decline("collateral")
        if context.free_capacity <= 0:
            return Decline("capacity")
        if context.free_stake < collateral:
            return Decline("stake")
        estimate = self.estimate(announce)
        if announce.run_seconds < estimate + self.margin_s:
            return Decline("too-short")
        if announce.window < self.config.min_window:
            return Decline("window")
        return Quote(price=price, collateral=collateral, run_seconds=estimate, min_window=self.config.min_window,
                     counter=over)
