"""Wire messages of collaborative training (docs/collaborative-training.md).

A collab job's rounds run on its own gossip topic, `agora/1/collab/<job id>`, so anyone may watch and audit them:
- `RoundMsg` (signed by the requester): round r starts from global model `model`, updates are due by
  `deadline_ms`; it also carries the outcome of round r - 1 (accepted updates, rejections with reasons) and the
  cumulative EIP-712 receipts the contract pays against. `done` ends the job (round = rounds + 1).
- `UpdateMsg` (signed by a participant): its update for round r is blob `update` (sha256 of canonical
  safetensors).
Both also travel point to point on `/agora/collab/1` (gossip may drop a message; the coordinator and each
participant must not), where the reply is an `Ack`. `CollabAssigned` (on `/agora/assign/1`) tells a chosen
provider its index and shard. Blobs (spec, shards, models, updates) move over `/agora/blob/1` with the collab job
id.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field

from marketplace.protocol import (
    TOPIC_PREFIX,
    Address,
    BlobIdStr,
    Hex32,
    HexSig,
    ProtocolError,
    Sig,
    _Msg,
    body_digest,
    decode,
    sign_digest,
    verify_signed,
)

COLLAB_PROTOCOL = "/agora/collab/1"
MAX_COLLAB_BYTES = 64 * 1024  # a round message lists up to 64 participants with their receipts
MAX_PARTICIPANTS = 64


def collab_topic(job_id: str) -> str:
    return f"{TOPIC_PREFIX}/collab/{job_id.lower()}"


class _Signed(_Msg):
    def signed(self, private_key: object) -> Self:
        return self.model_copy(update={"signature": sign_digest(private_key, body_digest(self))})


class Shard(_Msg):
    inputs: BlobIdStr
    labels: BlobIdStr
    n: int = Field(ge=1)


class CollabAssigned(_Msg):
    """The requester tells a chosen provider: you are participant `index` of collab job `job_id` on contract
    `collab`, train on `shard`. The provider checks all of it against the chain before doing any work."""

    type: Literal["collab-assigned"] = "collab-assigned"
    v: Literal[1] = 1
    ann: Hex32
    job_id: Hex32
    collab: Address
    index: int = Field(ge=0, lt=MAX_PARTICIPANTS)
    shard: Shard


class Contribution(_Msg):
    provider: Address
    update: BlobIdStr
    n: int = Field(ge=1)


class Rejection(_Msg):
    provider: Address
    reason: str = Field(max_length=300)


class Receipt(_Msg):
    """The requester's EIP-712 signature over Receipt(jobId, provider, count): `count` accepted rounds so far."""

    provider: Address
    count: int = Field(ge=0, le=1_000_000)
    sig: Sig


class RoundMsg(_Signed):
    type: Literal["collab-round"] = "collab-round"
    v: Literal[1] = 1
    job_id: Hex32
    round: int = Field(ge=1, le=1_000_001)
    model: BlobIdStr  # the global model this round starts from (the aggregate of the last round)
    deadline_ms: int = Field(ge=0)
    done: bool = False
    accepted: list[Contribution] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    rejected: list[Rejection] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    receipts: list[Receipt] = Field(default_factory=list, max_length=MAX_PARTICIPANTS)
    signature: HexSig | None = None


class UpdateMsg(_Signed):
    type: Literal["collab-update"] = "collab-update"
    v: Literal[1] = 1
    job_id: Hex32
    round: int = Field(ge=1, le=1_000_000)
    provider: Address
    update: BlobIdStr
    n: int = Field(ge=1)
    compute_s: float = Field(default=0.0, ge=0, le=1e7)
    signature: HexSig | None = None


COLLAB_TYPES = {"collab-assigned": CollabAssigned, "collab-round": RoundMsg, "collab-update": UpdateMsg}


def decode_round(data: bytes, requester: str, job_id: str) -> RoundMsg:
    """A round message of `job_id` signed by `requester`. Raises ProtocolError."""
    msg: RoundMsg = decode(data, RoundMsg, max_bytes=MAX_COLLAB_BYTES)
    if msg.job_id.lower() != job_id.lower():
        raise ProtocolError("round message of another job", reason="topic")
    verify_signed(msg, requester)
    return msg


def decode_update(data: bytes, participants: dict[str, int], job_id: str) -> UpdateMsg:
    """An update of `job_id` signed by the participant it names (`participants`: lower-case address -> index).
    Raises ProtocolError."""
    msg: UpdateMsg = decode(data, UpdateMsg, max_bytes=MAX_COLLAB_BYTES)
    if msg.job_id.lower() != job_id.lower():
        raise ProtocolError("update of another job", reason="topic")
    if msg.provider.lower() not in participants:
        raise ProtocolError(f"{msg.provider} is not a participant of this job", reason="signature")
    verify_signed(msg, msg.provider)
    return msg
