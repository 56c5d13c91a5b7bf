"""Typed mirrors of the Solidity structs (contracts/types/MarketTypes.sol), with their ABI encodings.

Units and ids are `NewType`s; every struct has `as_abi()` (the tuple web3 and eth-abi take) and, where the chain
returns it, `from_abi()`. The bid, which also travels as JSON (wire and bid files), is a `marketplace.models.Model`;
the rest are frozen dataclasses.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, NewType

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from pydantic import ConfigDict, model_validator

from marketplace.models import Bytes32, ChecksumAddress, DecimalInt, Model, WeiInt

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
    """Whole tokens (as typed by a user, e.g. "1.5") to base units, exactly. Raises ValueError for a value that is
    not a finite number or has more than 18 decimals (the token's smallest unit is 10^-18: rounding it away
    would send another amount than the one typed)."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(str(tokens).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount of tokens: {tokens!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite amount of tokens: {tokens!r}")
    wei = value.scaleb(TOKEN_DECIMALS)
    if wei != wei.to_integral_value():
        raise ValueError(f"{tokens} has more than {TOKEN_DECIMALS} decimals "
                         f"(the smallest unit is 10^-{TOKEN_DECIMALS})")
    return Wei(int(wei))


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


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


class Bid(Model):
    """A provider's offer; signed with EIP-712 (see marketplace.eip712). In JSON its keys are the EIP-712 field
    names (camelCase), amounts and the nonce decimal strings, the spec hash 0x-hex."""

    model_config = ConfigDict(alias_generator=_camel)

    spec_hash: Bytes32
    requester: ChecksumAddress
    provider: ChecksumAddress
    price: WeiInt
    collateral: WeiInt
    run_seconds: int
    expiry: int
    nonce: DecimalInt
    min_window: int = 0  # shortest challenge/reveal window accepted (0 = any the market allows)
    max_deadline: int = 0  # latest result deadline accepted, unix seconds (0 = no bound)

    def as_abi(self) -> tuple[Any, ...]:
        return (self.spec_hash, self.requester, self.provider, self.price, self.collateral, self.run_seconds,
                self.min_window, self.max_deadline, self.expiry, self.nonce)

    def as_message(self) -> dict[str, Any]:
        """The EIP-712 message dict."""
        return self.model_dump()


class BidSignature(Model):
    v: int
    r: Bytes32
    s: Bytes32


class SignedBid(Model):
    """A bid with its EIP-712 signature. JSON: the bid file format written by `agora bid sign` (version 1),
    `{"version": 1, "bid": {...}, "signature": {"v", "r", "s"}}`. Built as `SignedBid(bid=..., v=, r=, s=)`."""

    version: Literal[1] = 1
    bid: Bid
    signature: BidSignature

    json_error: ClassVar[type[Exception] | None] = ValueError
    json_what: ClassVar[str] = "bid file"

    @model_validator(mode="before")
    @classmethod
    def _flat_signature(cls, data: Any) -> Any:
        if isinstance(data, dict) and "signature" not in data and {"v", "r", "s"} <= data.keys():
            rest = {k: v for k, v in data.items() if k not in ("v", "r", "s")}
            rest["signature"] = BidSignature(v=data["v"], r=data["r"], s=data["s"])
            return rest
        return data

    @property
    def v(self) -> int:
        return self.signature.v

    @property
    def r(self) -> bytes:
        return self.signature.r

    @property
    def s(self) -> bytes:
        return self.signature.s

    def as_abi(self) -> tuple[Any, ...]:
        return (self.bid.as_abi(), self.v, self.r, self.s)


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
