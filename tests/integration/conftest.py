"""Fixtures of the integration tests: a freshly deployed market stack with funded, registered actors.

`stack` deploys token, registry and market on the session anvil (tests/conftest.py) once per module; the
`ganache_stack` / `hardhat_stack` fixtures do the same on the other dev chains. Every helper a test needs
hangs off the returned `Stack`: signed bids, job opening, time travel, balance snapshots and diffs, the
conservation invariant, and context managers asserting that a call reverts with an exact error and moves
nothing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from marketplace.client import ChainClient, connect
from marketplace.deployer import deploy
from marketplace.deployment import Deployment
from marketplace.devchain import time_travel
from marketplace.devstack import check_conservation
from marketplace.eip712 import BID_TYPES, set_domain, sign_bid
from marketplace.eip712 import domain as eip712_domain
from marketplace.errors import InsufficientFundsError, TransactionRevertedError
from marketplace.market import Market
from marketplace.types import Bid, JobParams, SignedBid, commitment_for, to_wei

W = to_wei
STAKE = W(500)
#: Dev accounts: 0 deploys, 1 requests, 2..7 provide, 8 is an outsider, 9 (the pauper) gets no tokens.
REQUESTER_INDEX, PROVIDER_INDICES, OUTSIDER_INDEX, PAUPER_INDEX = 1, range(2, 8), 8, 9
#: Snapshot fields that `Stack.diff` leaves out (derived or timestamps); `reverts` still compares them.
_UNDIFFED = ("scoreBps:", "unbondingReadyAt:")
_INFO_FIELDS = ("stake", "locked", "unbonding", "unbondingReadyAt", "jobsDone", "jobsFailed", "timesSlashed",
                "scoreBps")


def merge(*deltas: dict[str, int]) -> dict[str, int]:
    """Sum several expected-delta dicts key by key, dropping zeros."""
    out: dict[str, int] = {}
    for d in deltas:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v != 0}


@dataclass
class Opened:
    """A job opened by `Stack.open_job`."""

    job_id: bytes
    spec: bytes
    params: JobParams
    providers: list[Market]
    bids: list[SignedBid]
    requester: Market

    @property
    def escrow(self) -> int:
        return sum(b.bid.price for b in self.bids) if self.bids else self.params.budget


@dataclass
class Stack:
    rpc_url: str
    w3: Web3
    deployment: Deployment
    deployer: Market
    requester: Market
    providers: list[Market]
    outsider: Market
    pauper: Market
    keys: list[str]
    _nonces: Iterator[int] = field(default_factory=lambda: itertools.count(1_000))

    # ------------------------------------------------------------ actors
    @property
    def actors(self) -> dict[str, Market]:
        named = {"deployer": self.deployer, "requester": self.requester, "outsider": self.outsider,
                 "pauper": self.pauper}
        named.update({f"p{i}": p for i, p in enumerate(self.providers)})
        return named

    def name_of(self, market_or_address: Market | str) -> str:
        address = market_or_address.address if isinstance(market_or_address, Market) else market_or_address
        for name, m in self.actors.items():
            if m.address == Web3.to_checksum_address(address):
                return name
        raise KeyError(address)

    @property
    def token(self) -> Any:
        return self.requester.client.token

    @property
    def market(self) -> Any:
        return self.requester.client.market

    @property
    def registry(self) -> Any:
        return self.requester.client.registry

    # ------------------------------------------------------------ time
    def now(self) -> int:
        return self.requester.client.timestamp()

    def travel(self, seconds: int) -> int:
        """Move the chain clock forward and mine; returns the new block timestamp."""
        return time_travel(self.rpc_url, seconds)

    def travel_past(self, timestamp: int) -> int:
        """Travel until the latest block's timestamp is strictly after `timestamp`."""
        now = self.now()
        return self.travel(max(timestamp - now + 1, 0)) if now <= timestamp else now

    # ------------------------------------------------------------ bids and jobs
    def next_nonce(self) -> int:
        return next(self._nonces)

    def make_bid(self, provider: Market, spec_hash: bytes, price: float = 1, collateral: float = 10,
                 nonce: int | None = None, run_seconds: int = 30, expiry_in: int = 3600, *,
                 requester: Market | None = None, chain_id: int | None = None, market: str | None = None,
                 signer_key: str | None = None, min_window: int = 0, max_deadline: int = 0) -> SignedBid:
        """A bid of `provider` (prices in whole tokens) signed for this market.

        `signer_key` forges it with another key; `chain_id` / `market` sign it for another domain.
        """
        bid = Bid(spec_hash=spec_hash, requester=(requester or self.requester).address, provider=provider.address,
                  price=W(price), collateral=W(collateral), run_seconds=run_seconds,
                  expiry=self.now() + expiry_in, nonce=self.next_nonce() if nonce is None else nonce,
                  min_window=min_window, max_deadline=max_deadline)
        cid = chain_id if chain_id is not None else self.deployment.chain_id
        where = market or self.deployment.market
        if where.lower() != self.deployment.market.lower():  # the market's name and version, another contract
            real = eip712_domain(self.deployment.chain_id, self.deployment.market)
            set_domain(where, real["name"], real["version"])
        if signer_key is None:
            return sign_bid(provider.client.account, bid, chain_id=cid, market=where)
        signed = Account.sign_typed_data(signer_key, eip712_domain(cid, where), BID_TYPES, bid.as_message())
        return SignedBid(bid=bid, v=signed.v, r=signed.r.to_bytes(32, "big"), s=signed.s.to_bytes(32, "big"))

    def params(self, spec: bytes, *, replicas: int = 1, budget: float = 0, deadline_in: int = 600,
               window: int = 60, salt: bytes | None = None) -> JobParams:
        return JobParams(spec_hash=spec, salt=salt or os.urandom(32), deadline=self.now() + deadline_in,
                         window=window, replicas=replicas, budget=W(budget))

    def open_job(self, k: int = 1, *, providers: Sequence[Market] | None = None, price: float = 1,
                 collateral: float = 10, deadline_in: int = 600, window: int = 60, run_seconds: int = 30,
                 requester: Market | None = None, bids: Sequence[SignedBid] | None = None,
                 budget: float | None = None) -> Opened:
        """Open a job with k signed bids (providers p0..p{k-1} unless given), or, with `budget`, a bid-less
        Open job of k replicas."""
        requester = requester or self.requester
        spec = os.urandom(32)
        if budget is not None:
            params = self.params(spec, replicas=k, budget=budget, deadline_in=deadline_in, window=window)
            job_id, _ = requester.open_job(params, [])
            return Opened(job_id, spec, params, [], [], requester)
        chosen = list(providers if providers is not None else self.providers[:k])
        if bids is None:
            bids = [self.make_bid(p, spec, price, collateral, run_seconds=run_seconds, requester=requester)
                    for p in chosen]
        else:
            spec = bids[0].bid.spec_hash
        params = self.params(spec, replicas=len(bids), deadline_in=deadline_in, window=window)
        job_id, _ = requester.open_job(params, list(bids))
        return Opened(job_id, spec, params, chosen, list(bids), requester)

    def commit_all(self, job: Opened, results: Sequence[bytes | None], *,
                   participants: Sequence[Market] | None = None) -> list[bytes]:
        """Each participant i with a non-None result commits it; returns the salts (index-aligned)."""
        people = list(participants if participants is not None else job.providers)
        salts = []
        for i, (p, r) in enumerate(zip(people, results)):
            salt = os.urandom(32)
            salts.append(salt)
            if r is not None:
                p.commit(job.job_id, i, commitment_for(job.job_id, p.address, r, salt))
        return salts

    # ------------------------------------------------------------ balances
    def balances(self) -> dict[str, int]:
        """Token balances of market, registry and every actor, market balances of every actor, and the
        registry's providerInfo numbers of each provider."""
        tok, mkt, reg = self.token.functions, self.market.functions, self.registry.functions
        keys: list[str] = ["token:market", "token:registry"]
        calls: list[Any] = [tok.balanceOf(self.deployment.market), tok.balanceOf(self.deployment.registry)]
        for name, m in self.actors.items():
            keys += [f"token:{name}", f"mbal:{name}"]
            calls += [tok.balanceOf(m.address), mkt.balanceOf(m.address)]
        providers = [f"p{i}" for i in range(len(self.providers))]
        calls += [reg.providerInfo(p.address) for p in self.providers]
        with self.w3.batch_requests() as batch:  # one HTTP round trip instead of ~30
            for c in calls:
                batch.add(c)
            results: list[Any] = list(batch.execute())  # type: ignore[arg-type]
        snap = {k: int(v) for k, v in zip(keys, results)}
        for name, info in zip(providers, results[len(keys):]):
            # ProviderInfo(registered, stake, locked, unbonding, unbondingReadyAt, jobsDone, jobsFailed,
            # timesSlashed, scoreBps, metadataHash, peerId)
            for key, value in zip(_INFO_FIELDS, info[1:9]):
                snap[f"{key}:{name}"] = int(value)
        return snap

    merge = staticmethod(merge)

    @staticmethod
    def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        """Non-zero changes between two snapshots (scores and unbonding timestamps left out)."""
        return {k: after[k] - before[k] for k in after
                if after[k] != before[k] and not k.startswith(_UNDIFFED)}

    @staticmethod
    def pay_in(before: dict[str, int], who: str, amount: int) -> dict[str, int]:
        """Expected deltas of `who` paying `amount` of escrow: market balance first, then tokens."""
        from_balance = min(before[f"mbal:{who}"], amount)
        pulled = amount - from_balance
        return merge({f"mbal:{who}": -from_balance, f"token:{who}": -pulled, "token:market": pulled})

    def live_escrow(self) -> int:
        """Sum of the escrow of every live job, from the market's events: escrow locked at opening, minus the
        budget refunded at assignment, plus a dispute's verifier escrow, for every job not yet settled."""
        events = self.market.events
        start = self.deployment.block
        escrow: dict[bytes, int] = {}
        for log in events.JobOpened().get_logs(from_block=start):
            escrow[bytes(log["args"]["jobId"])] = int(log["args"]["escrow"])
        for log in events.JobAssigned().get_logs(from_block=start):
            escrow[bytes(log["args"]["jobId"])] -= int(log["args"]["refund"])
        for log in events.JobDisputed().get_logs(from_block=start):
            escrow[bytes(log["args"]["jobId"])] += int(log["args"]["escrow"])
        for log in events.JobSettled().get_logs(from_block=start):
            escrow.pop(bytes(log["args"]["jobId"]))
        return sum(escrow.values())

    def live_jobs(self) -> list[bytes]:
        """Ids of the jobs opened on this deployment and not settled (rebuilt with the facade's JobIndex)."""
        ids = [bytes(log["args"]["jobId"])
               for log in self.market.events.JobOpened().get_logs(from_block=self.deployment.block)]
        return [i for i in ids if not self.requester.job(i).settled]

    def assert_conserved(self) -> None:
        """token(market) + token(registry) == live escrow + market balances + providers' stake + unbonding."""
        snap = self.balances()
        check_conservation(market_tokens=snap["token:market"], registry_tokens=snap["token:registry"],
                           escrow=self.live_escrow(), market_balances=[snap[f"mbal:{n}"] for n in self.actors],
                           stakes=[(snap[f"stake:p{i}"], snap[f"unbonding:p{i}"])
                                   for i in range(len(self.providers))])

    # ------------------------------------------------------------ failures
    @contextmanager
    def reverts(self, error_name: str, *, snapshot: Callable[[], Any] | None = None,
                errors: type[Exception] | tuple[type[Exception], ...] = TransactionRevertedError,
                one_line: bool = False) -> Iterator[Any]:
        """Expect an error of `errors` (TransactionRevertedError) named `error_name`, nothing moved (`snapshot`
        unchanged, default `balances`) and no transaction mined (the facade simulates first and sends nothing
        that would revert). `one_line`: the error's message is also a single line."""
        snap = snapshot or self.balances
        before, block = snap(), self.w3.eth.block_number
        with pytest.raises(errors) as info:
            yield info
        assert getattr(info.value, "error_name", None) == error_name, f"expected {error_name}, got {info.value!r}"
        if one_line:
            assert "\n" not in str(info.value)
        assert snap() == before
        assert self.w3.eth.block_number == block

    @contextmanager
    def insufficient(self, *fragments: str) -> Iterator[Any]:
        """Expect InsufficientFundsError whose message holds every fragment (amounts), and no balance moved."""
        before, block = self.balances(), self.w3.eth.block_number
        with pytest.raises(InsufficientFundsError) as info:
            yield info
        for fragment in fragments:
            assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
        assert self.balances() == before
        assert self.w3.eth.block_number == block


def build_stack(rpc_url: str) -> Stack:
    """Deploy a fresh token / registry / market on `rpc_url` and register six providers (500 tokens each)."""
    from marketplace.devchain import DEV_ACCOUNTS

    w3 = connect(rpc_url)
    keys = [k for k, _ in DEV_ACCOUNTS]
    accounts = [Account.from_key(k) for k in keys]
    deployment = deploy(w3, accounts[0], fund=[a.address for a in accounts[1:PAUPER_INDEX]])
    base = ChainClient(w3, deployment)

    def market(i: int) -> Market:
        return Market(base.with_account(accounts[i]))

    providers = [market(i) for i in PROVIDER_INDICES]
    for p in providers:
        p.approve(deployment.registry, STAKE)
        p.register(STAKE, b"\x00\x25" + os.urandom(37), os.urandom(32))
    requester = market(REQUESTER_INDEX)
    requester.approve(deployment.market, W(1_000_000))
    return Stack(rpc_url=rpc_url, w3=w3, deployment=deployment, deployer=market(0), requester=requester,
                 providers=providers, outsider=market(OUTSIDER_INDEX), pauper=market(PAUPER_INDEX), keys=keys)


@pytest.fixture
def conserving(stack: Stack) -> list[Any]:
    """What the `conserved` fixture checks: objects with `assert_conserved()`. A module overrides this fixture
    to name its own (another chain's stack, the collab contract)."""
    return [stack]


@pytest.fixture
def conserved(conserving: list[Any]) -> Iterator[None]:
    """The conservation invariant holds before and after the test (use with `pytest.mark.usefixtures`)."""
    for party in conserving:
        party.assert_conserved()
    yield
    for party in conserving:
        party.assert_conserved()


@pytest.fixture(scope="module")
def stack(anvil: Any) -> Stack:
    """A fresh deployment on the session anvil, shared by one test module."""
    s = build_stack(anvil.rpc_url)
    s.assert_conserved()
    return s


@pytest.fixture(scope="module")
def ganache_stack(ganache_chain: Any) -> Stack:
    return build_stack(ganache_chain.rpc_url)


@pytest.fixture(scope="module")
def hardhat_stack(hardhat_chain: Any) -> Stack:
    return build_stack(hardhat_chain.rpc_url)
