"""Stateful property test of the whole market on one Anvil: random actors, random actions, exact model.

A hypothesis `RuleBasedStateMachine` drives two requesters and six providers (some of them cheaters) through
random sequences of open (k = 1 / k = 3, with or without bids), assign, cancel, submit, accept, dispute,
commit, reveal, finalize, finalizeBatch, addStake, requestUnstake, withdrawStake, deposit, withdraw and time
travel. Many attempts are invalid on purpose (wrong phase, too early or too late, wrong caller, settled job,
not enough funds or free stake, reused nonces, duplicate providers). One weighted `act` rule picks the action
(its log, printed with a failure, names each one); a failing example shrinks by dropping steps.

The machine keeps a Python model of the contracts: every live job's `Job` struct (so no job is rebuilt from
logs), its commit / reveal bitmaps, every market balance, token balance and registry account. Before each
transaction the model predicts success or the exact custom error; afterwards it applies the same state change.
After every step the chain is read in one JSON-RPC batch and checked:

1. conservation: token(market) + token(registry) == live escrow + market balances + stake + unbonding;
2. no honest provider was ever slashed (jobsFailed == timesSlashed == 0 on chain, and in the model);
3. every token balance, market balance and registry account equals the model's, and the chain clock too.

Honest providers always deliver the true result (keccak256(specHash)) in time: before each step (and in
stages across a time jump) they perform every duty that falls due soon. Cheaters submit / commit / reveal
random wrong values (each its own, so they never collude), sometimes the truth, sometimes nothing.

Every example starts from the same deployment: `evm_revert` to a snapshot taken once (and re-taken, since
Anvil snapshots are single-use). Blocks are mined with `anvil_setBlockTimestampInterval(1)`, so each
transaction lands exactly one second after the previous block and the model knows every `block.timestamp`.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import requests
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_keys import keys as eth_keys
from eth_utils import keccak, to_checksum_address
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from marketplace.client import ChainClient, connect
from marketplace.deployer import deploy
from marketplace.deployment import MarketParams
from marketplace.devchain import DEV_ACCOUNTS, LocalChain, rpc_call
from marketplace.devstack import check_conservation
from marketplace.errors import AgoraError, InsufficientFundsError, TransactionRevertedError
from marketplace.types import (
    ZERO32,
    Assignment,
    Bid,
    Job,
    JobParams,
    JobPhase,
    SignedBid,
    commitment_for,
    job_id_for,
)

pytestmark = pytest.mark.integration

W = 10**18
PARAMS = MarketParams(unbonding_delay=150)  # short enough that withdrawStake succeeds within an example
MIN_STAKE, DELAY = PARAMS.min_stake, PARAMS.unbonding_delay
MIN_RUN, MAX_RUN, MIN_WINDOW, MAX_WINDOW = PARAMS.min_run, PARAMS.max_run, PARAMS.min_window, PARAMS.max_window
MAX_REPLICAS = 15
STAKE0 = 200 * W
POOR_FUNDS = 30 * W

ADDR = [to_checksum_address(a) for _, a in DEV_ACCOUNTS]
KEYS = [bytes.fromhex(k[2:]) for k, _ in DEV_ACCOUNTS]
IDX = {a: i for i, a in enumerate(ADDR)}
REQUESTERS = (1, 8)  # 8 is poor: 30 tokens, runs out and meets MarketInsufficientBalance
PROVIDERS = (2, 3, 4, 5, 6, 7)
ACTORS = REQUESTERS + PROVIDERS
EVERYONE = tuple(range(10))

STEP_COUNT = 50
MAX_EXAMPLES = int(os.environ.get("AGORA_STATEFUL_EXAMPLES", "55"))  # override only to debug
MIN_TOTAL_STEPS = 2000 if MAX_EXAMPLES >= 55 else 0
STEPS = {"total": 0, "txs": 0, "reverted": 0, "examples": 0, "honest": 0, "settled": 0, "slashes": 0}

_INFO_TYPE = "(bool,uint96,uint96,uint96,uint64,uint32,uint16,uint16,uint16,bytes32,bytes)"
_SEL_BALANCE = keccak(text="balanceOf(address)")[:4]
_SEL_INFO = keccak(text="providerInfo(address)")[:4]
_BID_TYPEHASH = keccak(text="Bid(bytes32 specHash,address requester,address provider,uint96 price,uint96 collateral,"
                            "uint32 runSeconds,uint32 minWindow,uint64 maxDeadline,uint64 expiry,uint256 nonce)")
_PROV_FIELDS = ("stake", "locked", "unbonding", "readyAt", "done", "failed", "slashed")


# ---------------------------------------------------------------- chain world (one per module)


@dataclass
class World:
    chain: LocalChain
    rpc_url: str
    clients: dict[int, ChainClient]
    token: str
    registry: str
    market: str
    chain_id: int
    domain_separator: bytes
    snapshot: str
    initial: dict[Any, int]
    session: requests.Session
    read_payload: list[dict[str, Any]]
    read_keys: list[Any]

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return rpc_call(self.rpc_url, method, params or [])

    def reset(self) -> int:
        """Revert the chain to the post-deploy snapshot, take a fresh one; returns the latest timestamp."""
        assert self.rpc("evm_revert", [self.snapshot]) is True, "evm_revert failed"
        self.snapshot = self.rpc("evm_snapshot")
        self.rpc("anvil_setBlockTimestampInterval", [1])
        for c in self.clients.values():
            c._nonce = None  # account nonces went back with the revert
        return int(self.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def read(self) -> dict[Any, int]:
        """Every balance the invariants look at, in one JSON-RPC batch."""
        reply = self.session.post(self.rpc_url, json=self.read_payload, timeout=30).json()
        reply.sort(key=lambda r: r["id"])
        out: dict[Any, int] = {}
        for key, r in zip(self.read_keys, reply):
            assert "result" in r, f"batch read of {key} failed: {r}"
            if key == "now":
                out["now"] = int(r["result"]["timestamp"], 16)
            elif key[0] == "info":
                info = abi_decode([_INFO_TYPE], bytes.fromhex(r["result"][2:]))[0]
                a = key[1]
                for name, value in zip(_PROV_FIELDS, (info[1], info[2], info[3], info[4], info[5], info[6],
                                                      info[7])):
                    out[(name, a)] = int(value)
                out[("registered", a)] = int(info[0])
            else:
                out[key] = int(r["result"], 16)
        return out


def _build_read(world_addrs: dict[str, str]) -> tuple[list[dict[str, Any]], list[Any]]:
    calls: list[tuple[Any, str, bytes]] = []
    token, market, registry = world_addrs["token"], world_addrs["market"], world_addrs["registry"]

    def enc(addr: str) -> bytes:
        return abi_encode(["address"], [addr])

    calls.append((("tok", "market"), token, _SEL_BALANCE + enc(market)))
    calls.append((("tok", "registry"), token, _SEL_BALANCE + enc(registry)))
    for a in EVERYONE:
        calls.append((("tok", a), token, _SEL_BALANCE + enc(ADDR[a])))
        calls.append((("mbal", a), market, _SEL_BALANCE + enc(ADDR[a])))
    for a in EVERYONE:
        calls.append((("info", a), registry, _SEL_INFO + enc(ADDR[a])))
    payload = [{"jsonrpc": "2.0", "id": i, "method": "eth_call",
                "params": [{"to": to, "data": "0x" + data.hex()}, "latest"]} for i, (_, to, data) in enumerate(calls)]
    keys_ = [k for k, _, _ in calls]
    payload.append({"jsonrpc": "2.0", "id": len(calls), "method": "eth_getBlockByNumber", "params": ["latest", False]})
    keys_.append("now")
    return payload, keys_


@pytest.fixture(scope="module")
def world() -> Any:
    chain = LocalChain("anvil")
    chain.start()
    try:
        w3 = connect(chain.rpc_url, timeout=30)
        # Simulate every transaction against the block it will be mined in (Anvil's "pending"), not the
        # latest one: with a one-second block interval a deadline check would otherwise differ by a second.
        w3.eth.default_block = "pending"
        accounts = [Account.from_key(k) for k in KEYS]
        dep = deploy(w3, accounts[0], params=PARAMS, fund=[ADDR[i] for i in range(1, 8)])
        base = ChainClient(w3, dep)
        clients = {i: base.with_account(accounts[i]) for i in EVERYONE}
        clients[0].transact(clients[0].token.functions.transfer(ADDR[8], POOR_FUNDS), action="fund poor")
        for a in ACTORS:
            c = clients[a]
            c.transact(c.token.functions.approve(dep.market, 2**255), action="approve market")
            c.transact(c.token.functions.approve(dep.registry, 2**255), action="approve registry")
        for p in PROVIDERS:
            c = clients[p]
            c.transact(c.registry.functions.register(STAKE0, b"\x00\x25" + os.urandom(37), os.urandom(32)),
                       action="register")
        domain_type = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        sep = keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
                                [domain_type, keccak(text="TensoragoraMarket"), keccak(text="1"), dep.chain_id,
                                 dep.market]))
        payload, read_keys = _build_read({"token": dep.token, "market": dep.market, "registry": dep.registry})
        rpc_call(chain.rpc_url, "anvil_setBlockTimestampInterval", [1])
        rpc_call(chain.rpc_url, "evm_mine")
        world = World(chain=chain, rpc_url=chain.rpc_url, clients=clients, token=dep.token, registry=dep.registry,
                      market=dep.market, chain_id=dep.chain_id, domain_separator=sep,
                      snapshot=rpc_call(chain.rpc_url, "evm_snapshot"), initial={}, session=requests.Session(),
                      read_payload=payload, read_keys=read_keys)
        world.initial = world.read()
        # Our hand-rolled EIP-712 digest must be the market's.
        probe = Bid(spec_hash=b"\x01" * 32, requester=ADDR[1], provider=ADDR[2], price=W, collateral=2 * W,
                    run_seconds=3, expiry=4, nonce=5)
        assert clients[1].market.functions.bidDigest(probe.as_abi()).call() == _bid_digest(sep, probe)
        yield world
    finally:
        chain.stop()


def _bid_digest(sep: bytes, b: Bid) -> bytes:
    struct = keccak(abi_encode(["bytes32", "bytes32", "address", "address", "uint96", "uint96", "uint32", "uint32",
                                "uint64", "uint64", "uint256"], [_BID_TYPEHASH, *b.as_abi()]))
    return keccak(b"\x19\x01" + sep + struct)


def _sign_bid(sep: bytes, b: Bid) -> SignedBid:
    sig = eth_keys.PrivateKey(KEYS[IDX[b.provider]]).sign_msg_hash(_bid_digest(sep, b))
    v, r, s = sig.vrs
    return SignedBid(bid=b, v=v + 27, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))


# ---------------------------------------------------------------- the model


@dataclass
class MJob:
    id: bytes
    req: int
    job: Job
    truth: bytes
    committed: int = 0
    revealed: int = 0
    results: dict[int, bytes] = field(default_factory=dict)  # commitment, then revealed result
    secrets: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # what participant i committed to
    settled: bool = False
    outcome: str = ""

    def participants(self) -> list[Assignment] | None:
        j = self.job
        if j.phase == JobPhase.ASSIGNED and j.replicas >= 2:
            return list(j.workers)
        if j.phase == JobPhase.DISPUTED:
            return [j.workers[0], *j.verifiers]
        return None


class Rejected(Exception):
    """The model's prediction that a call reverts, with the custom error's name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _err_name(exc: AgoraError) -> str | None:
    if getattr(exc, "error_name", None):
        return exc.error_name  # type: ignore[attr-defined]
    if isinstance(exc, InsufficientFundsError):
        m = str(exc)
        for frag, name in (("free stake", "RegistryInsufficientFreeStake"),
                           ("market balance", "MarketInsufficientWithdrawable"),
                           ("allowance", "*InsufficientAllowance"), ("token balance", "*InsufficientBalance")):
            if frag in m:
                return name
    return None


def _same_error(got: str | None, expected: str) -> bool:
    if got is None:
        return False
    if got.startswith("*"):
        return expected.endswith(got[1:])
    return got == expected


class Model:
    """Python mirror of JobMarket + ProviderRegistry state, updated only by successful transactions."""

    def __init__(self, initial: dict[Any, int]) -> None:
        self.now = initial["now"]
        self.tok = {a: initial[("tok", a)] for a in EVERYONE}
        self.mbal = {a: initial[("mbal", a)] for a in EVERYONE}
        self.prov = {a: {f: initial[(f, a)] for f in _PROV_FIELDS} for a in EVERYONE}
        self.registered = {a for a in EVERYONE if initial[("registered", a)]}
        self.used_nonces: set[tuple[int, int]] = set()
        self.jobs: dict[bytes, MJob] = {}
        self.slashes: list[tuple[int, bytes]] = []  # (provider, job) of every Slash
        self.opened: MJob | None = None

    # ---------------- derived
    def live(self) -> list[MJob]:
        return [j for j in self.jobs.values() if not j.settled]

    def escrow(self) -> int:
        return sum(j.job.escrow for j in self.live())

    def expected(self) -> dict[Any, int]:
        out: dict[Any, int] = {"now": self.now, ("tok", "market"): self.escrow() + sum(self.mbal.values()),
                               ("tok", "registry"): sum(p["stake"] + p["unbonding"] for p in self.prov.values())}
        for a in EVERYONE:
            out[("tok", a)] = self.tok[a]
            out[("mbal", a)] = self.mbal[a]
            out[("registered", a)] = int(a in self.registered)
            for f in _PROV_FIELDS:
                out[(f, a)] = self.prov[a][f]
        return out

    # ---------------- shared pieces (each raises Rejected before touching state, or returns an apply step)
    def _load(self, mj: MJob) -> None:
        if mj.settled:  # settlement deletes the slot
            raise Rejected("MarketUnknownJob")

    @staticmethod
    def _only_requester(caller: int, mj: MJob) -> None:
        if ADDR[caller] != mj.job.requester:
            raise Rejected("MarketNotRequester")

    @staticmethod
    def _expect(mj: MJob, phase: JobPhase) -> None:
        if mj.job.phase != phase:
            raise Rejected("MarketWrongPhase")

    @staticmethod
    def _timing(deadline: int, window: int, t: int) -> None:
        if deadline < t + MIN_RUN or deadline > t + MAX_RUN:
            raise Rejected("MarketDeadlineOutOfBounds")
        if window < MIN_WINDOW or window > MAX_WINDOW:
            raise Rejected("MarketWindowOutOfBounds")

    def _take_bids(self, spec: bytes, requester: str, deadline: int, bids: list[SignedBid],
                   others: tuple[Assignment, ...], t: int) -> tuple[tuple[Assignment, ...], int, Callable[[], None]]:
        out: list[Assignment] = []
        used: set[tuple[int, int]] = set()
        locks: dict[int, int] = {}
        total = 0
        for sb in bids:
            b = sb.bid
            p = IDX[b.provider]
            if b.spec_hash != spec or b.requester != requester:
                raise Rejected("MarketBidMismatch")
            if b.expiry < t:
                raise Rejected("MarketBidExpired")
            if deadline < t + b.run_seconds:
                raise Rejected("MarketDeadlineTooShort")
            if (p, b.nonce) in self.used_nonces or (p, b.nonce) in used:
                raise Rejected("MarketBidNonceUsed")
            used.add((p, b.nonce))
            if any(a.provider == b.provider for a in out) or any(a.provider == b.provider for a in others):
                raise Rejected("MarketDuplicateProvider")
            acct = self.prov[p]
            if acct["stake"] < MIN_STAKE:
                raise Rejected("RegistryStakeBelowMinimum" if p in self.registered else "RegistryNotRegistered")
            if acct["stake"] - acct["locked"] - locks.get(p, 0) < b.collateral:
                raise Rejected("RegistryInsufficientFreeStake")
            locks[p] = locks.get(p, 0) + b.collateral
            out.append(Assignment(b.provider, b.price, b.collateral))
            total += b.price

        def apply() -> None:
            self.used_nonces |= used
            for q, c in locks.items():
                self.prov[q]["locked"] += c
        return tuple(out), total, apply

    def _fund(self, who: int, amount: int) -> Callable[[], None]:
        """_useBalance then _pull: market balance first, then tokens (allowance is unlimited)."""
        from_balance = min(self.mbal[who], amount)
        pulled = amount - from_balance
        if pulled > 0 and self.tok[who] < pulled:
            raise Rejected("MarketInsufficientBalance")

        def apply() -> None:
            self.mbal[who] -= from_balance
            self.tok[who] -= pulled
        return apply

    def _registry_settle(self, mj: MJob, changes: list[tuple[str, int, str]]) -> None:
        for provider, amount, outcome in changes:
            p = IDX[provider]
            acct = self.prov[p]
            assert acct["locked"] >= amount, f"model: lock underflow for {p}"
            acct["locked"] -= amount
            if outcome == "reward":
                acct["done"] += 1
            elif outcome == "slash":
                acct["stake"] -= amount
                acct["failed"] += 1
                if amount > 0:
                    acct["slashed"] += 1
                self.slashes.append((p, mj.id))
                STEPS["slashes"] += 1

    def _settle(self, mj: MJob, outcome: str) -> None:
        mj.settled, mj.outcome = True, outcome
        STEPS["settled"] += 1

    def _close_open(self, mj: MJob) -> None:
        self._settle(mj, "cancelled")
        self.mbal[IDX[mj.job.requester]] += mj.job.budget

    def _pay(self, mj: MJob) -> None:
        w = mj.job.workers[0]
        self._settle(mj, "completed")
        self.mbal[IDX[w.provider]] += w.price
        self._registry_settle(mj, [(w.provider, w.collateral, "reward")])

    def _expire_single(self, mj: MJob) -> None:
        w = mj.job.workers[0]
        self._settle(mj, "expired")
        self.mbal[IDX[mj.job.requester]] += w.price + w.collateral
        self._registry_settle(mj, [(w.provider, w.collateral, "slash")])

    def _settle_majority(self, mj: MJob, revealed: int) -> None:
        parts = mj.participants()
        assert parts is not None
        n = len(parts)
        disputed = mj.job.phase == JobPhase.DISPUTED
        values = {i: (mj.job.result if disputed and i == 0 else mj.results[i]) for i in range(n) if revealed >> i & 1}
        winner, paid = None, 0
        for i in range(n):
            if i not in values:
                continue
            mask = sum(1 << j for j in values if values[j] == values[i])
            if 2 * mask.bit_count() > n:
                winner, paid = values[i], mask
                break
        has_winner = winner is not None
        original_stands = disputed and not has_winner  # a dispute needs a strict majority against the result
        if original_stands:
            winner = mj.job.result
            paid = sum(1 << i for i in values if values[i] == mj.job.result)
        refund = compensation = 0
        changes = []
        for i, a in enumerate(parts):
            if paid >> i & 1:
                self.mbal[IDX[a.provider]] += a.price
                changes.append((a.provider, a.collateral, "reward"))
            else:
                refund += a.price
                if not revealed >> i & 1 or has_winner:
                    compensation += a.collateral
                    changes.append((a.provider, a.collateral, "slash"))
                else:
                    changes.append((a.provider, a.collateral, "release"))
        self._settle(mj, "completed" if has_winner or original_stands
                     else ("expired" if revealed == 0 else "no_majority"))
        self.mbal[IDX[mj.job.requester]] += refund + compensation
        self._registry_settle(mj, changes)

    def _participant(self, mj: MJob, index: int) -> tuple[Assignment, int]:
        parts = mj.participants()
        if parts is None:
            raise Rejected("MarketWrongPhase")
        if index >= len(parts):
            raise Rejected("MarketNotAssignedProvider")
        return parts[index], len(parts)

    def _try_finalize(self, mj: MJob, t: int) -> Callable[[], None] | None:
        """None when not finalizable yet, else the settlement to apply."""
        j = mj.job
        if j.phase == JobPhase.SUBMITTED:
            return None if t <= j.challenge_end else (lambda: self._pay(mj))
        if t <= j.deadline:
            return None
        if j.phase == JobPhase.OPEN:
            return lambda: self._close_open(mj)
        if j.phase == JobPhase.ASSIGNED and j.replicas == 1:
            return lambda: self._expire_single(mj)
        self._participant(mj, 0)
        if t <= j.deadline + j.window and mj.revealed != mj.committed:
            return None
        return lambda: self._settle_majority(mj, mj.revealed)

    # ---------------- the market's functions: check (raise Rejected) and return the state change
    def open_job(self, caller: int, params: JobParams, bids: list[SignedBid], t: int) -> Callable:
        """The job id depends on the block number: `apply` leaves the new job in `self.opened`."""
        self._timing(params.deadline, params.window, t)
        if not bids:
            if params.replicas == 0 or params.replicas > MAX_REPLICAS:
                raise Rejected("MarketBadReplicas")
            if params.budget == 0:
                raise Rejected("MarketZeroBudget")
            job = Job(requester=ADDR[caller], spec_hash=params.spec_hash, deadline=params.deadline,
                      window=params.window, replicas=params.replicas, phase=JobPhase.OPEN, budget=params.budget)
            escrow, take = params.budget, (lambda: None)
        else:
            if len(bids) > MAX_REPLICAS:
                raise Rejected("MarketBadReplicas")
            workers, escrow, take = self._take_bids(params.spec_hash, ADDR[caller], params.deadline, bids, (), t)
            job = Job(requester=ADDR[caller], spec_hash=params.spec_hash, deadline=params.deadline,
                      window=params.window, replicas=len(bids), phase=JobPhase.ASSIGNED, workers=workers)
        fund = self._fund(caller, escrow)

        def apply() -> None:
            take()
            fund()
            self.opened = MJob(id=b"", req=caller, job=job, truth=keccak(params.spec_hash))
        return apply

    def assign(self, caller: int, mj: MJob, bids: list[SignedBid], t: int) -> Callable:
        self._load(mj)
        self._only_requester(caller, mj)
        self._expect(mj, JobPhase.OPEN)
        if len(bids) != mj.job.replicas:
            raise Rejected("MarketWrongBidCount")
        workers, total, take = self._take_bids(mj.job.spec_hash, mj.job.requester, mj.job.deadline, bids,
                                               mj.job.workers, t)
        if total > mj.job.budget:
            raise Rejected("MarketOverBudget")

        def apply() -> None:
            take()
            self.mbal[mj.req] += mj.job.budget - total
            mj.job = mj.job.evolve(workers=workers, phase=JobPhase.ASSIGNED, budget=0)
        return apply

    def cancel(self, caller: int, mj: MJob, t: int) -> Callable:
        self._load(mj)
        self._only_requester(caller, mj)
        self._expect(mj, JobPhase.OPEN)
        return lambda: self._close_open(mj)

    def accept(self, caller: int, mj: MJob, t: int) -> Callable:
        self._load(mj)
        self._only_requester(caller, mj)
        self._expect(mj, JobPhase.SUBMITTED)
        return lambda: self._pay(mj)

    def dispute(self, caller: int, mj: MJob, bids: list[SignedBid], deadline: int, t: int) -> Callable:
        self._load(mj)
        self._only_requester(caller, mj)
        self._expect(mj, JobPhase.SUBMITTED)
        j = mj.job
        if t > j.challenge_end:
            raise Rejected("MarketChallengeWindowClosed")
        if len(bids) < 2 or len(bids) >= MAX_REPLICAS:
            raise Rejected("MarketBadVerifierCount")
        self._timing(deadline, j.window, t)
        verifiers, cost, take = self._take_bids(j.spec_hash, j.requester, deadline, bids, j.workers, t)
        if cost > j.workers[0].collateral:
            raise Rejected("MarketDisputeTooCostly")
        fund = self._fund(mj.req, cost)

        def apply() -> None:
            take()
            fund()
            mj.job = j.evolve(verifiers=verifiers, phase=JobPhase.DISPUTED, deadline=deadline)
            mj.committed, mj.revealed = 1, 1
        return apply

    def submit(self, caller: int, mj: MJob, result: bytes, t: int) -> Callable:
        self._load(mj)
        j = mj.job
        if j.phase != JobPhase.ASSIGNED or j.replicas != 1:
            raise Rejected("MarketWrongPhase")
        if ADDR[caller] != j.workers[0].provider:
            raise Rejected("MarketNotAssignedProvider")
        if t > j.deadline:
            raise Rejected("MarketDeadlinePassed")
        if result == ZERO32:
            raise Rejected("MarketZeroResult")

        def apply() -> None:
            mj.job = j.evolve(phase=JobPhase.SUBMITTED, result=result, challenge_end=t + j.window)
        return apply

    def commit(self, caller: int, mj: MJob, index: int, commitment: bytes, t: int) -> Callable:
        self._load(mj)
        a, _ = self._participant(mj, index)
        if ADDR[caller] != a.provider:
            raise Rejected("MarketNotAssignedProvider")
        if t > mj.job.deadline:
            raise Rejected("MarketDeadlinePassed")
        if mj.committed >> index & 1:
            raise Rejected("MarketAlreadyCommitted")
        if commitment == ZERO32:
            raise Rejected("MarketZeroResult")

        def apply() -> None:
            mj.results[index] = commitment
            mj.committed |= 1 << index
        return apply

    def reveal(self, caller: int, mj: MJob, index: int, result: bytes, salt: bytes, t: int) -> Callable:
        self._load(mj)
        a, n = self._participant(mj, index)
        if ADDR[caller] != a.provider:
            raise Rejected("MarketNotAssignedProvider")
        if not mj.committed >> index & 1:
            raise Rejected("MarketNotCommitted")
        if mj.revealed >> index & 1:
            raise Rejected("MarketAlreadyRevealed")
        full = (1 << n) - 1
        if mj.committed != full and t <= mj.job.deadline:
            raise Rejected("MarketRevealNotOpen")
        if t > mj.job.deadline + mj.job.window:
            raise Rejected("MarketRevealClosed")
        if result == ZERO32:
            raise Rejected("MarketZeroResult")
        if commitment_for(mj.id, a.provider, result, salt) != mj.results[index]:
            raise Rejected("MarketCommitmentMismatch")

        def apply() -> None:
            mj.results[index] = result
            mj.revealed |= 1 << index
            if mj.revealed == mj.committed and (mj.committed == full or t > mj.job.deadline):
                self._settle_majority(mj, mj.revealed)
        return apply

    def finalize(self, mj: MJob, t: int) -> Callable:
        self._load(mj)
        settle = self._try_finalize(mj, t)
        if settle is None:
            raise Rejected("MarketNotFinalizable")
        return settle

    def finalize_batch(self, jobs: list[MJob], t: int) -> Callable:
        steps = []
        done: set[bytes] = set()
        for mj in jobs:
            if mj.settled or mj.id in done:  # slot deleted: skipped
                continue
            settle = self._try_finalize(mj, t)
            if settle is None:
                raise Rejected("MarketNotFinalizable")
            steps.append(settle)
            done.add(mj.id)

        def apply() -> None:
            for s in steps:
                s()
        return apply

    def deposit(self, caller: int, amount: int, t: int) -> Callable:
        if amount == 0:
            raise Rejected("MarketZeroAmount")
        if self.tok[caller] < amount:
            raise Rejected("MarketInsufficientBalance")

        def apply() -> None:
            self.tok[caller] -= amount
            self.mbal[caller] += amount
        return apply

    def withdraw(self, caller: int, amount: int, t: int) -> Callable:
        if amount == 0:
            raise Rejected("MarketZeroAmount")
        if self.mbal[caller] < amount:
            raise Rejected("MarketInsufficientWithdrawable")

        def apply() -> None:
            self.mbal[caller] -= amount
            self.tok[caller] += amount
        return apply

    # ---------------- the registry's
    def add_stake(self, caller: int, amount: int, t: int) -> Callable:
        if caller not in self.registered:
            raise Rejected("RegistryNotRegistered")
        if amount == 0:
            raise Rejected("RegistryZeroAmount")
        if self.tok[caller] < amount:
            raise Rejected("RegistryInsufficientBalance")

        def apply() -> None:
            self.prov[caller]["stake"] += amount
            self.tok[caller] -= amount
        return apply

    def request_unstake(self, caller: int, amount: int, t: int) -> Callable:
        if caller not in self.registered:
            raise Rejected("RegistryNotRegistered")
        if amount == 0:
            raise Rejected("RegistryZeroAmount")
        acct = self.prov[caller]
        if acct["stake"] - acct["locked"] < amount:
            raise Rejected("RegistryInsufficientFreeStake")

        def apply() -> None:
            acct["stake"] -= amount
            acct["unbonding"] += amount
            acct["readyAt"] = t + DELAY
        return apply

    def withdraw_stake(self, caller: int, t: int) -> Callable:
        acct = self.prov[caller]
        if acct["unbonding"] == 0:
            raise Rejected("RegistryNothingUnbonding")
        if t < acct["readyAt"]:
            raise Rejected("RegistryStillUnbonding")

        def apply() -> None:
            self.tok[caller] += acct["unbonding"]
            acct["unbonding"] = 0
        return apply


# ---------------------------------------------------------------- the state machine


def _pick(r: random.Random, items: list[Any]) -> Any:
    return items[r.randrange(len(items))]


class MarketMachine(RuleBasedStateMachine):
    world: World  # set by the test

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        now = w.reset()
        STEPS["examples"] += 1
        initial = dict(w.initial)
        assert now == initial["now"], f"revert did not restore the clock: {now} != {initial['now']}"
        self.m = Model(initial)
        self.cheaters: frozenset[int] = frozenset()
        self.nonces = itertools.count(1)
        self.lies = itertools.count(1)
        self.salts = itertools.count(1)
        self.steps = 0
        self.log: list[str] = []

    # ---------------- plumbing
    def honest(self, p: int) -> bool:
        return p in PROVIDERS and p not in self.cheaters

    def lie(self, mj: MJob, who: int) -> bytes:
        """A wrong result nobody else will ever reveal: cheaters never collude."""
        return keccak(b"lie" + mj.id + bytes([who]) + next(self.lies).to_bytes(8, "big"))

    def tx(self, caller: int, build: Callable[[Any], Any], check: Callable[[int], Any], action: str) -> Any:
        """Predict with `check(t)` (raises Rejected, or returns apply), send, compare, apply on success."""
        t = self.m.now + 1
        try:
            predicted = check(t)
            expected_error = None
        except Rejected as rej:
            predicted, expected_error = None, rej.name
        client = self.world.clients[caller]
        self.log.append(f"{action} by {caller} at t={t}: expect {expected_error or 'ok'}")
        before = self.world.read() if expected_error is not None else None
        try:
            res = client.transact(build(client), action=action)
        except AgoraError as exc:
            if exc.__class__ is TransactionRevertedError and getattr(exc, "tx_hash", None):
                self.m.now += 1  # mined and reverted
            STEPS["reverted"] += 1
            assert expected_error is not None, f"{action} by {caller}: model expected success, chain said {exc!r}"
            got = _err_name(exc)
            assert _same_error(got, expected_error), \
                f"{action} by {caller}: model expected {expected_error}, chain said {got}: {exc}"
            after = self.world.read()
            if before is not None:
                assert after == before, f"failed {action} moved balances: {self._diff(before, after)}"
            return None
        STEPS["txs"] += 1
        self.m.now += 1
        assert expected_error is None, f"{action} by {caller}: chain succeeded, model expected {expected_error}"
        if callable(predicted):
            predicted()
        return res

    @staticmethod
    def _diff(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, tuple[int, int]]:
        return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}

    def pick_job(self, r: random.Random, want: Callable[[MJob], bool]) -> MJob:
        """Mostly a live job `want`s; else any live job (wrong phase), sometimes a settled one (unknown)."""
        good = [j for j in self.m.live() if want(j)]
        if good and r.random() < 0.9:
            return _pick(r, good)
        live = self.m.live()
        if live and r.random() < 0.7:
            return _pick(r, live)
        return _pick(r, list(self.m.jobs.values()))

    def caller_for(self, r: random.Random, right: int, p_right: float = 0.85) -> int:
        return right if r.random() < p_right else _pick(r, list(ACTORS))

    def make_bids(self, r: random.Random, spec: bytes, requester: int, providers: list[int], deadline: int,
                  max_price: int = 5) -> list[SignedBid]:
        out = []
        room = deadline - (self.m.now + 1)
        for p in providers:
            run = r.randint(5, max(5, min(25, room))) if r.random() < 0.93 else max(room, 0) + r.randint(1, 20)
            used = [n for q, n in self.m.used_nonces if q == p]
            nonce = _pick(r, used) if used and r.random() < 0.04 else next(self.nonces)
            requester_addr = ADDR[requester] if r.random() < 0.97 else ADDR[_pick(r, list(REQUESTERS))]
            b = Bid(spec_hash=spec, requester=requester_addr, provider=ADDR[p], price=r.randint(1, max_price) * W,
                    collateral=r.randint(5, 30) * W, run_seconds=run, expiry=self.m.now + 1000, nonce=nonce)
            out.append(_sign_bid(self.world.domain_separator, b))
        return out

    def choose_providers(self, r: random.Random, k: int, exclude: tuple[int, ...] = ()) -> list[int]:
        pool = [p for p in PROVIDERS if p not in exclude]
        chosen = r.sample(pool, min(k, len(pool)))
        if r.random() < 0.05 and chosen:
            chosen[-1] = chosen[0] if len(chosen) > 1 else _pick(r, list(exclude) or chosen)  # duplicate
        return chosen

    def salt(self) -> bytes:
        return keccak(b"salt" + next(self.salts).to_bytes(8, "big"))

    def step(self) -> None:
        STEPS["total"] += 1

    # ---------------- honest providers: every duty done in time
    def duties(self) -> list[tuple[int, int, str, MJob, int]]:
        """(due, order, kind, job, index) of every pending honest duty."""
        out = []
        for mj in self.m.live():
            j = mj.job
            if j.phase == JobPhase.ASSIGNED and j.replicas == 1:
                if self.honest(IDX[j.workers[0].provider]):
                    out.append((j.deadline, 0, "submit", mj, 0))
                continue
            parts = mj.participants()
            if parts is None:
                continue
            for i, a in enumerate(parts):
                if not self.honest(IDX[a.provider]):
                    continue
                if not mj.committed >> i & 1:
                    out.append((j.deadline, 0, "commit", mj, i))
                elif not mj.revealed >> i & 1:
                    out.append((j.deadline + j.window, 1, "reveal", mj, i))
        out.sort(key=lambda d: (d[0], d[1], d[3].id, d[4]))
        return out

    def reveal_open(self, mj: MJob, t: int) -> bool:
        parts = mj.participants()
        assert parts is not None
        return mj.committed == (1 << len(parts)) - 1 or t > mj.job.deadline

    def honest_act(self, kind: str, mj: MJob, i: int) -> None:
        STEPS["honest"] += 1
        if kind == "submit":
            who = IDX[mj.job.workers[0].provider]
            self.tx(who, lambda c: c.market.functions.submitResult(mj.id, mj.job.as_abi(), mj.truth),
                    lambda t: self.m.submit(who, mj, mj.truth, t), "honest submit")
        elif kind == "commit":
            who = IDX[mj.participants()[i].provider]
            salt = keccak(mj.id + bytes([i, who]))
            commitment = commitment_for(mj.id, ADDR[who], mj.truth, salt)
            if self.tx(who, lambda c: c.market.functions.commit(mj.id, mj.job.as_abi(), i, commitment),
                       lambda t: self.m.commit(who, mj, i, commitment, t), "honest commit"):
                mj.secrets[i] = (mj.truth, salt)
        else:
            who = IDX[mj.participants()[i].provider]
            value, salt = mj.secrets[i]
            self.tx(who, lambda c: c.market.functions.reveal(mj.id, mj.job.as_abi(), i, value, salt),
                    lambda t: self.m.reveal(who, mj, i, value, salt, t), "honest reveal")

    def catch_up(self, target: int) -> None:
        """Do every honest duty due before `target` (plus a margin), travelling to reveal phases as needed."""
        for _ in range(200):
            duties = self.duties()
            t = self.m.now + 1
            margin = 10 + 2 * len(duties)
            for due, _, kind, mj, _ in duties:
                assert due >= t, \
                    f"harness bug: honest {kind} of job {mj.id.hex()[:8]} missed (due {due}, now {t})"
            urgent = [d for d in duties if d[0] <= target + margin]
            doable = [d for d in urgent if d[2] != "reveal" or self.reveal_open(d[3], t)]
            if doable:
                _, _, kind, mj, i = doable[0]
                before = (mj.committed, mj.revealed, mj.job.phase, mj.settled)
                self.honest_act(kind, mj, i)
                assert (mj.committed, mj.revealed, mj.job.phase, mj.settled) != before, \
                    f"honest {kind} made no progress on job {mj.id.hex()[:8]}"
                continue
            if urgent:  # reveals that open only after the deadline: let the deadline pass
                deadline = min(d[3].job.deadline for d in urgent)
                self.travel_to(deadline)
                continue
            return
        raise AssertionError("harness bug: catch_up did not converge")

    def travel_to(self, timestamp: int) -> None:
        if timestamp <= self.m.now:
            return
        self.world.rpc("evm_setNextBlockTimestamp", [timestamp])
        self.world.rpc("evm_mine")
        self.m.now = timestamp

    # ---------------- setup and invariants
    @initialize(cheaters=st.sets(st.sampled_from(PROVIDERS), max_size=3))
    def setup(self, cheaters: set[int]) -> None:
        self.cheaters = frozenset(cheaters)

    @invariant()
    def chain_matches_model(self) -> None:
        snap = self.world.read()
        # (1) conservation, from the chain's own numbers plus the model's live escrow.
        check_conservation(market_tokens=snap[("tok", "market")], registry_tokens=snap[("tok", "registry")],
                           escrow=self.m.escrow(), market_balances=[snap[("mbal", a)] for a in EVERYONE],
                           stakes=[(snap[("stake", a)], snap[("unbonding", a)]) for a in EVERYONE])
        # (2) no honest provider was ever slashed.
        for p in PROVIDERS:
            if self.honest(p):
                assert snap[("failed", p)] == 0 and snap[("slashed", p)] == 0, \
                    f"honest provider {p} was slashed: {snap[('failed', p)]} failures"
        assert not [s for s in self.m.slashes if self.honest(s[0])], "model slashed an honest provider"
        # (3) every number equals the model's.
        expected = self.m.expected()
        assert snap == expected, f"chain != model: {self._diff(expected, snap)}\n" + "\n".join(self.log[-15:])

    # ---------------- rules
    def do_open_job(self, r: random.Random) -> None:
        req = _pick(r, list(REQUESTERS)) if r.random() < 0.3 else 1
        k = 1 if r.random() < 0.55 else 3
        spec = r.randbytes(32)
        deadline = self.m.now + (r.randint(30, 90) if r.random() < 0.96 else r.randint(0, 10))
        window = r.randint(20, 40) if r.random() < 0.97 else r.randint(0, 4)
        if r.random() < 0.75:
            bids = self.make_bids(r, spec, req, self.choose_providers(r, k), deadline)
            params = JobParams(spec_hash=spec, salt=self.salt(), deadline=deadline, window=window, replicas=len(bids))
        else:
            bids = []
            budget = r.randint(1, 20) * W if r.random() < 0.95 else 0
            params = JobParams(spec_hash=spec, salt=self.salt(), deadline=deadline, window=window, replicas=k,
                               budget=budget)
        res = self.tx(req, lambda c: c.market.functions.openJob(params.as_abi(), [b.as_abi() for b in bids]),
                      lambda t: self.m.open_job(req, params, bids, t), "open job")
        if res is not None:
            mj, self.m.opened = self.m.opened, None
            assert mj is not None
            mj.id = job_id_for(ADDR[req], params.salt, res.block)
            assert mj.id not in self.m.jobs
            self.m.jobs[mj.id] = mj

    def do_assign(self, r: random.Random) -> None:
        mj = self.pick_job(r, lambda j: j.job.phase == JobPhase.OPEN)
        caller = self.caller_for(r, mj.req)
        k = mj.job.replicas if r.random() < 0.93 else r.choice([1, 2, 3, 4])
        max_price = max(1, mj.job.budget // W // max(k, 1) + (1 if r.random() < 0.1 else 0))
        bids = self.make_bids(r, mj.job.spec_hash, mj.req, self.choose_providers(r, k), mj.job.deadline,
                              max_price=max_price)
        self.tx(caller, lambda c: c.market.functions.assign(mj.id, mj.job.as_abi(), [b.as_abi() for b in bids]),
                lambda t: self.m.assign(caller, mj, bids, t), "assign")

    def do_cancel(self, r: random.Random) -> None:
        mj = self.pick_job(r, lambda j: j.job.phase == JobPhase.OPEN)
        caller = self.caller_for(r, mj.req)
        self.tx(caller, lambda c: c.market.functions.cancel(mj.id, mj.job.as_abi()),
                lambda t: self.m.cancel(caller, mj, t), "cancel")

    def do_accept(self, r: random.Random) -> None:
        mj = self.pick_job(r, lambda j: j.job.phase == JobPhase.SUBMITTED)
        caller = self.caller_for(r, mj.req)
        self.tx(caller, lambda c: c.market.functions.accept(mj.id, mj.job.as_abi()),
                lambda t: self.m.accept(caller, mj, t), "accept")

    def do_dispute(self, r: random.Random) -> None:
        t = self.m.now + 1
        mj = self.pick_job(r, lambda j: j.job.phase == JobPhase.SUBMITTED and j.job.challenge_end >= t)
        caller = self.caller_for(r, mj.req)
        worker = IDX[mj.job.workers[0].provider] if mj.job.workers else PROVIDERS[0]
        count = 2 if r.random() < 0.93 else r.choice([1, 3])
        verifiers = self.choose_providers(r, count, exclude=(worker,) if r.random() < 0.95 else ())
        deadline = self.m.now + r.randint(30, 90)
        bids = self.make_bids(r, mj.job.spec_hash, mj.req, verifiers, deadline, max_price=5)
        self.tx(caller, lambda c: c.market.functions.dispute(mj.id, mj.job.as_abi(), [b.as_abi() for b in bids],
                                                             deadline),
                lambda t: self.m.dispute(caller, mj, bids, deadline, t), "dispute")

    def do_work(self, r: random.Random) -> None:
        """A participant of a live job acts: honest ones do their duty, cheaters lie, skip or fumble."""
        mj = self.pick_job(r, lambda j: j.job.phase in (JobPhase.ASSIGNED, JobPhase.DISPUTED))
        j = mj.job
        if j.phase == JobPhase.ASSIGNED and j.replicas == 1 or not mj.participants():
            who = IDX[j.workers[0].provider] if j.workers else _pick(r, list(PROVIDERS))
            who = self.caller_for(r, who, 0.9)
            if self.honest(who):
                result = mj.truth if r.random() < 0.97 else ZERO32  # a zero result is rejected, harmlessly
            else:
                result = r.choice([self.lie(mj, who), self.lie(mj, who), mj.truth, ZERO32])
            self.tx(who, lambda c: c.market.functions.submitResult(mj.id, j.as_abi(), result),
                    lambda t: self.m.submit(who, mj, result, t), "submit")
            return
        parts = mj.participants()
        i = r.randrange(len(parts)) if r.random() < 0.97 else len(parts)
        owner = IDX[parts[i].provider] if i < len(parts) else _pick(r, list(PROVIDERS))
        who = self.caller_for(r, owner, 0.9)
        if not mj.committed >> i & 1 if i < len(parts) else r.random() < 0.5:
            if self.honest(who):
                value = mj.truth
            else:
                value = mj.truth if r.random() < 0.25 else self.lie(mj, who)
            salt = r.randbytes(32)
            commitment = commitment_for(mj.id, ADDR[who], value, salt) if r.random() < 0.97 else ZERO32
            if self.tx(who, lambda c: c.market.functions.commit(mj.id, j.as_abi(), i, commitment),
                       lambda t: self.m.commit(who, mj, i, commitment, t), "commit"):
                mj.secrets[i] = (value, salt)
        else:
            value, salt = mj.secrets.get(i, (mj.truth, r.randbytes(32)))
            if not self.honest(who) and r.random() < 0.2:
                value = self.lie(mj, who)  # does not open the commitment
            self.tx(who, lambda c: c.market.functions.reveal(mj.id, j.as_abi(), i, value, salt),
                    lambda t: self.m.reveal(who, mj, i, value, salt, t), "reveal")

    def do_finalize(self, r: random.Random) -> None:
        t = self.m.now + 1
        ready = [j for j in self.m.live() if self.m._try_finalize(j, t) is not None]
        mj = _pick(r, ready) if ready and r.random() < 0.7 else self.pick_job(r, lambda j: True)
        caller = _pick(r, list(ACTORS))
        self.tx(caller, lambda c: c.market.functions.finalize(mj.id, mj.job.as_abi()),
                lambda t: self.m.finalize(mj, t), "finalize")

    def do_finalize_batch(self, r: random.Random) -> None:
        t = self.m.now + 1
        ready = [j for j in self.m.live() if self.m._try_finalize(j, t) is not None]
        settled = [j for j in self.m.jobs.values() if j.settled]
        pool = ready + settled if ready and r.random() < 0.75 else list(self.m.jobs.values())
        jobs = [_pick(r, pool) for _ in range(r.randint(1, 4))]
        caller = _pick(r, list(ACTORS))
        self.tx(caller, lambda c: c.market.functions.finalizeBatch([x.id for x in jobs],
                                                                   [x.job.as_abi() for x in jobs]),
                lambda t: self.m.finalize_batch(jobs, t), "finalize batch")

    def do_stake(self, r: random.Random) -> None:
        who = _pick(r, list(PROVIDERS)) if r.random() < 0.9 else _pick(r, list(ACTORS))
        amount = r.randint(1, 100) * W if r.random() < 0.95 else 0
        self.tx(who, lambda c: c.registry.functions.addStake(amount), lambda t: self.m.add_stake(who, amount, t),
                "add stake")

    def do_unstake(self, r: random.Random) -> None:
        who = _pick(r, list(PROVIDERS)) if r.random() < 0.9 else _pick(r, list(ACTORS))
        free = self.m.prov[who]["stake"] - self.m.prov[who]["locked"]
        amount = r.choice([r.randint(1, 30) * W, r.randint(1, 30) * W, free // 4, free, free + 1, 0])
        self.tx(who, lambda c: c.registry.functions.requestUnstake(amount),
                lambda t: self.m.request_unstake(who, amount, t), "request unstake")

    def do_withdraw_stake(self, r: random.Random) -> None:
        who = _pick(r, list(PROVIDERS)) if r.random() < 0.9 else _pick(r, list(ACTORS))
        self.tx(who, lambda c: c.registry.functions.withdrawStake(), lambda t: self.m.withdraw_stake(who, t),
                "withdraw stake")

    def do_deposit(self, r: random.Random) -> None:
        who = _pick(r, list(ACTORS))
        amount = r.choice([r.randint(1, 40) * W, self.m.tok[who] + 1, 0]) if r.random() < 0.3 else r.randint(1, 20) * W
        self.tx(who, lambda c: c.market.functions.deposit(amount), lambda t: self.m.deposit(who, amount, t), "deposit")

    def do_withdraw(self, r: random.Random) -> None:
        who = _pick(r, list(ACTORS))
        have = self.m.mbal[who]
        amount = r.choice([have, have, have // 2, have + 1, 0]) if have else r.choice([0, W])
        self.tx(who, lambda c: c.market.functions.withdraw(amount), lambda t: self.m.withdraw(who, amount, t),
                "withdraw")

    def do_travel(self, r: random.Random) -> None:
        seconds = r.choice([r.randint(40, 100), r.randint(40, 100), r.randint(1, 15), DELAY + 10])
        target = self.m.now + seconds
        self.catch_up(target)
        self.travel_to(target)
        self.log.append(f"travel to {target}")

    # One rule picks the action, with weights: hypothesis' own choice among rules favours the first ones.
    ACTIONS: ClassVar[dict[str, int]] = {"open_job": 14, "work": 24, "finalize": 7, "finalize_batch": 4, "accept": 5,
                                         "dispute": 12, "assign": 5, "cancel": 2, "travel": 12, "stake": 3,
                                         "unstake": 4, "withdraw_stake": 3, "deposit": 3, "withdraw": 5}
    JOB_ACTIONS: ClassVar[set[str]] = {"work", "finalize", "finalize_batch", "accept", "dispute", "assign", "cancel"}

    @rule(seed=st.integers(0, 2**64 - 1))
    def act(self, seed: int) -> None:
        self.step()
        self.steps += 1
        # Mixed with the step's position: hypothesis favours a few special integers, which would repeat actions.
        r = random.Random(f"{seed}:{self.steps}")
        name = r.choices(list(self.ACTIONS), weights=list(self.ACTIONS.values()))[0]
        if name in self.JOB_ACTIONS and not self.m.jobs:
            name = "open_job"
        phases = {j.job.phase for j in self.m.live()}
        challengeable = [j for j in self.m.live()
                         if j.job.phase == JobPhase.SUBMITTED and j.job.challenge_end > self.m.now]
        if name == "accept" and JobPhase.SUBMITTED not in phases and r.random() < 0.7:
            name = "work"
        if name == "dispute" and not challengeable and r.random() < 0.8:
            name = "work"
        if challengeable and name in ("travel", "finalize", "finalize_batch") and r.random() < 0.3:
            name = "dispute"  # disputes need a submitted result and an open window: give them more chances
        if name in ("assign", "cancel") and JobPhase.OPEN not in phases and r.random() < 0.7:
            name = "open_job"
        self.log.append(f"-- act {name} (seed {seed})")
        if name != "travel":
            self.catch_up(self.m.now)
        getattr(self, f"do_{name}")(r)


@pytest.fixture
def machine(world: World) -> type[MarketMachine]:
    MarketMachine.world = world
    return MarketMachine


def test_random_market_sequences(machine: type[MarketMachine]) -> None:
    for k in STEPS:
        STEPS[k] = 0
    started = time.monotonic()
    run_state_machine_as_test(machine, settings=settings(
        max_examples=MAX_EXAMPLES, stateful_step_count=STEP_COUNT, deadline=None, database=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]))
    elapsed = time.monotonic() - started
    print(f"\nstateful market: {STEPS['total']} steps in {STEPS['examples']} examples, {STEPS['txs']} transactions, "
          f"{STEPS['reverted']} rejected, {STEPS['honest']} honest catch-up actions, {STEPS['settled']} settlements, "
          f"{STEPS['slashes']} slashes (all of cheaters), "
          f"{elapsed:.1f} s")
    assert STEPS["total"] >= MIN_TOTAL_STEPS, f"only {STEPS['total']} state-machine steps ran"
