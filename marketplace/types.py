"""Typed mirrors of the Solidity structs (contracts/types/MarketTypes.sol), with their ABI encodings.

Units and ids are `NewType`s; every struct is a frozen dataclass with `as_abi()` (the tuple web3 and eth-abi
take) and, where the chain returns it, `from_abi()`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NewType

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

Wei = NewType("Wei", int)  # token base units (18 decimals)
JobId = NewType("JobId", bytes)  # 32 bytes
SpecHash = NewType("SpecHash", bytes)  # 32 bytes
ResultHash = NewType("ResultHash", bytes)  # 32 bytes

TOKEN_DECIMALS = 18
ZERO32 = b"\x00" * 32
HASH_MASK = ~((1 << 64) - 1) & (2**256 - 1)  # job slot: hash192 | opening block32 | committed16 | revealed16
TOMBSTONE_SLOT = 1

ASSIGNMENT_ABI = "(address,uint96,uint96)"
JOB_ABI = f"(address,bytes32,uint64,uint32,uint8,uint8,uint96,bytes32,uint64,{ASSIGNMENT_ABI}[],{ASSIGNMENT_ABI}[])"


class JobPhase(enum.IntEnum):
    NONE = 0
    OPEN = 1
    ASSIGNED = 2
    SUBMITTED = 3
    DISPUTED = 4


class Outcome(enum.IntEnum):
    COMPLETED = 0
    NO_MAJORITY = 1
    EXPIRED = 2
    CANCELLED = 3


def to_wei(tokens: float | str) -> Wei:
    """Whole tokens (as typed by a user, e.g. "1.5") to base units."""
    from decimal import Decimal

    return Wei(int(Decimal(str(tokens)) * (10**TOKEN_DECIMALS)))


def from_wei(amount: int) -> str:
    """Base units to a human string of whole tokens, without float rounding."""
    from decimal import Decimal

    text = format(Decimal(amount) / (10**TOKEN_DECIMALS), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def b32(value: bytes | str) -> bytes:
    """Coerce a 0x-hex string or bytes to exactly 32 bytes (raises ValueError otherwise)."""
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, kw_only=True)
class Bid:
    """A provider's offer; signed with EIP-712 (see marketplace.eip712)."""

    spec_hash: bytes
    requester: str
    provider: str
    price: int
    collateral: int
    run_seconds: int
    expiry: int
    nonce: int
    min_window: int = 0  # shortest challenge/reveal window accepted (0 = any the market allows)
    max_deadline: int = 0  # latest result deadline accepted, unix seconds (0 = no bound)

    def as_abi(self) -> tuple[Any, ...]:
        return (self.spec_hash, to_checksum_address(self.requester), to_checksum_address(self.provider),
                self.price, self.collateral, self.run_seconds, self.min_window, self.max_deadline, self.expiry,
                self.nonce)

    def as_message(self) -> dict[str, Any]:
        """The EIP-712 message dict."""
        return {"specHash": self.spec_hash, "requester": to_checksum_address(self.requester),
                "provider": to_checksum_address(self.provider), "price": self.price,
                "collateral": self.collateral, "runSeconds": self.run_seconds, "minWindow": self.min_window,
                "maxDeadline": self.max_deadline, "expiry": self.expiry, "nonce": self.nonce}

    def to_json(self) -> dict[str, Any]:
        return {"specHash": "0x" + self.spec_hash.hex(), "requester": to_checksum_address(self.requester),
                "provider": to_checksum_address(self.provider), "price": str(self.price),
                "collateral": str(self.collateral), "runSeconds": self.run_seconds, "minWindow": self.min_window,
                "maxDeadline": self.max_deadline, "expiry": self.expiry, "nonce": str(self.nonce)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Bid:
        return cls(spec_hash=b32(d["specHash"]), requester=to_checksum_address(d["requester"]),
                   provider=to_checksum_address(d["provider"]), price=int(d["price"]),
                   collateral=int(d["collateral"]), run_seconds=int(d["runSeconds"]), expiry=int(d["expiry"]),
                   nonce=int(d["nonce"]), min_window=int(d.get("minWindow", 0)),
                   max_deadline=int(d.get("maxDeadline", 0)))


@dataclass(frozen=True, kw_only=True)
class SignedBid:
    bid: Bid
    v: int
    r: bytes
    s: bytes

    def as_abi(self) -> tuple[Any, ...]:
        return (self.bid.as_abi(), self.v, self.r, self.s)

    def to_json(self) -> dict[str, Any]:
        """The bid file format written by `agora bid sign` (version 1)."""
        return {"version": 1, "bid": self.bid.to_json(),
                "signature": {"v": self.v, "r": "0x" + self.r.hex(), "s": "0x" + self.s.hex()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedBid:
        if d.get("version") != 1:
            raise ValueError(f"unsupported bid file version {d.get('version')!r} (expected 1)")
        sig = d["signature"]
        return cls(bid=Bid.from_json(d["bid"]), v=int(sig["v"]), r=b32(sig["r"]), s=b32(sig["s"]))


@dataclass(frozen=True)
class Assignment:
    provider: str
    price: int
    collateral: int

    def as_abi(self) -> tuple[Any, ...]:
        return (to_checksum_address(self.provider), self.price, self.collateral)

    @classmethod
    def from_abi(cls, t: Any) -> Assignment:
        if isinstance(t, Mapping):
            return cls(to_checksum_address(t["provider"]), int(t["price"]), int(t["collateral"]))
        return cls(to_checksum_address(t[0]), int(t[1]), int(t[2]))


@dataclass(frozen=True, kw_only=True)
class JobParams:
    spec_hash: bytes
    salt: bytes
    deadline: int
    window: int
    replicas: int = 1
    budget: int = 0

    def as_abi(self) -> tuple[Any, ...]:
        return (self.spec_hash, self.salt, self.deadline, self.window, self.replicas, self.budget)


@dataclass(frozen=True, kw_only=True)
class Job:
    """The whole state of a live job, exactly as the market hashes it."""

    requester: str
    spec_hash: bytes
    deadline: int
    window: int
    replicas: int
    phase: JobPhase
    budget: int = 0
    result: bytes = ZERO32
    challenge_end: int = 0
    workers: tuple[Assignment, ...] = field(default_factory=tuple)
    verifiers: tuple[Assignment, ...] = field(default_factory=tuple)

    def as_abi(self) -> tuple[Any, ...]:
        return (to_checksum_address(self.requester), self.spec_hash, self.deadline, self.window, self.replicas,
                int(self.phase), self.budget, self.result, self.challenge_end,
                [a.as_abi() for a in self.workers], [a.as_abi() for a in self.verifiers])

    def slot_hash(self) -> int:
        """keccak256(abi.encode(job)) with the low 64 bits cleared, as stored in the job slot (see HASH_MASK)."""
        return int.from_bytes(keccak(abi_encode([JOB_ABI], [self.as_abi()])), "big") & HASH_MASK

    def evolve(self, **changes: Any) -> Job:
        return replace(self, **changes)

    @property
    def participants(self) -> tuple[Assignment, ...]:
        """Commit-reveal participants: the workers, or for a dispute the worker then the verifiers."""
        if self.phase == JobPhase.DISPUTED:
            return self.workers[:1] + self.verifiers
        return self.workers

    @property
    def escrow(self) -> int:
        if self.phase == JobPhase.OPEN:
            return self.budget
        return sum(a.price for a in self.workers) + sum(a.price for a in self.verifiers)


def job_id_for(requester: str, salt: bytes, block_number: int) -> bytes:
    """The id openJob gives when mined in `block_number`: keccak256(abi.encode(requester, salt, block))."""
    return keccak(abi_encode(["address", "bytes32", "uint256"], [to_checksum_address(requester), salt, block_number]))


def commitment_for(job_id: bytes, provider: str, result: bytes, salt: bytes) -> bytes:
    """keccak256(abi.encode(jobId, provider, result, salt)), what commit() stores."""
    return keccak(abi_encode(["bytes32", "address", "bytes32", "bytes32"],
                             [job_id, to_checksum_address(provider), result, salt]))
