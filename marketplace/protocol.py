"""The market's wire protocol over libp2p: topics, message schemas, signatures and validation. No torch, no trio.

Every message is one JSON object (RFC 8785 canonical JSON, `marketplace.models.canonical_json`) with a `type` field,
sent either on a gossipsub topic (announcements, adverts) or as one frame of a request/response protocol (see
`marketplace.p2p`).
Bytes travel as 0x-hex, token amounts as decimal strings of wei, times as unix seconds (or `*_ms` milliseconds).

    topic                                  what                              signed by
    agora/1/jobs/<kind>/<device>           Announce  (requester -> all)      requester's Ethereum key (EIP-191)
    agora/1/adverts                        Advert    (provider -> all)       provider's Ethereum key (EIP-191)

    protocol            request (initiator)                reply
    /agora/bid/1        BidOffer   (provider -> requester)  Ack   (the bid is EIP-712 signed for the contract)
    /agora/assign/1     Assigned | Nudge (requester -> provider) Ack (the provider re-checks the chain)
    /agora/result/1     ResultMsg | CommitMsg | RevealMsg    Ack   (provider -> requester; EIP-712 where relayed)
    /agora/blob/1       BlobRequest (either way)             BLOB_OK + total size (8 bytes) + chunk, or BLOB_ERR + text

Parsing never raises anything but `ProtocolError` (a subclass of ValueError) whatever the bytes; `decode` checks
size, JSON, the schema (unknown fields are errors) and the types. Signatures and freshness are checked by the
`verify_*` functions and `AnnounceValidator`, which also enforces replay protection and a per-requester rate
limit (the job of gossipsub's own spam protection, switched off here: it also throttled our own publishes).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from pydantic import Field, StringConstraints, ValidationError, model_validator

from marketplace.errors import PeerRecordError, ProtocolError
from marketplace.models import ChecksumAddress, Model, canonical_json, validation_message
from marketplace.types import SignedBid

PROTOCOL_VERSION = 1
TOPIC_PREFIX = "agora/1"
ADVERT_TOPIC = f"{TOPIC_PREFIX}/adverts"
BID_PROTOCOL = "/agora/bid/1"
ASSIGN_PROTOCOL = "/agora/assign/1"
RESULT_PROTOCOL = "/agora/result/1"
BLOB_PROTOCOL = "/agora/blob/1"

KINDS = ("inference", "train", "finetune", "evaluate", "collab")  # collab: docs/collaborative-training.md
DEVICES = ("cpu", "cuda")

MAX_ANNOUNCE_BYTES = 4096
MAX_ADVERT_BYTES = 4096
MAX_MESSAGE_BYTES = 16 * 1024  # bid, assign, result, commit, reveal and blob requests
BLOB_CHUNK = 512 * 1024  # the most one /agora/blob/1 reply carries (under the 1 MiB frame cap)
BLOB_OK, BLOB_ERR = b"\x00", b"\x01"

MAX_CLOCK_SKEW_S = 30  # an announcement stamped further from now than this is stale (or from the future)
MAX_BID_WINDOW_S = 120  # the longest bid window an announcement may ask for
REPLAY_TTL_S = 600  # how long a seen (requester, nonce) is remembered; > skew + bid window

Hex32 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{64}$")]
Hex16 = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{32}$")]
HexSig = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]
Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
Wei = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,30}$")]
PeerIdStr = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{30,80}$")]
Multiaddr = Annotated[str, StringConstraints(min_length=4, max_length=256)]
BlobIdStr = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class _Msg(Model):
    """A wire message: a `Model` (frozen, strict, unknown fields refused) encoded as RFC 8785 JSON."""

    def body(self) -> dict[str, Any]:
        """The message as a dict, without its signature."""
        d = self.to_json()
        d.pop("signature", None)
        return d

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


#: The encoding of every message and of what signatures cover (RFC 8785; see `marketplace.models`).
canonical = canonical_json


class RejectCode(StrEnum):
    """Why a request was refused, machine-readable (`Ack.code`); the `reason` labels of ProtocolError are among
    them."""

    MALFORMED = "malformed"  # not JSON, wrong schema or values
    OVERSIZED = "oversized"
    TYPE = "type"  # a message of another type than the protocol takes
    UNSIGNED = "unsigned"
    SIGNATURE = "signature"  # wrongly signed, or a signer / peer record that does not match
    CHAIN = "chain"  # for another chain or market
    TOPIC = "topic"
    STALE = "stale"  # too old (or from the future), or its window closed
    REPLAY = "replay"
    RATE = "rate"
    REFUSED = "refused"  # the peer refused to serve it
    UNKNOWN_JOB = "unknown_job"  # no such job or announcement (or its bid window closed)
    NOT_ASSIGNED = "not_assigned"  # the sender has no part in this job
    WRONG_RESULT = "wrong_result"  # a result, commitment or reveal that does not check out
    TERMS = "terms"  # a bid whose price, collateral, expiry or deadlines do not fit the announcement
    BUSY = "busy"
    INTERNAL = "internal"
    OTHER = "other"  # a refusal given with text only (older call sites)


def body_digest(msg: _Msg) -> bytes:
    """keccak256 of the canonical JSON of the message without its signature: what its signer signs."""
    return keccak(canonical(msg.body()))


def sign_digest(private_key: Any, digest: bytes) -> str:
    key = getattr(private_key, "key", private_key)
    signed = Account.sign_message(encode_defunct(primitive=digest), private_key=key)
    return "0x" + bytes(signed.signature).hex()


def recover_digest(digest: bytes, signature: str) -> str:
    try:
        return str(Account.recover_message(encode_defunct(primitive=digest), signature=signature))
    except Exception as err:  # noqa: BLE001 - eth_keys raises several types for junk signatures
        raise ProtocolError(f"bad signature: {err}", reason="signature") from None


# ---------------------------------------------------------------------------------------------------- peer records
RECORD_VERSION: Final = 1


def record_message(peer_id: str, chain_id: int) -> str:
    return f"tensoragora-peer:{peer_id}:{int(chain_id)}"


class PeerRecord(Model):
    """`address` (checksum) says it runs libp2p peer `peer_id` (base58) on chain `chain_id`: the EIP-191
    signature of `record_message`. Verified by `verify_peer_record`."""

    json_error: ClassVar[type[Exception] | None] = PeerRecordError
    json_what: ClassVar[str] = "malformed peer record"

    version: Literal[1] = RECORD_VERSION
    peer_id: str = Field(max_length=128)
    address: ChecksumAddress
    chain_id: int = Field(ge=1)
    signature: str = Field(max_length=256)  # 0x-hex, 65 bytes

    @classmethod
    def sign(cls, private_key: bytes | str, peer_id: Any, chain_id: int) -> PeerRecord:
        """Signed by `private_key` for `peer_id` (a libp2p ID or its base58 text)."""
        acct = Account.from_key(private_key)
        pid = str(peer_id)
        signed = Account.sign_message(encode_defunct(text=record_message(pid, chain_id)), private_key=acct.key)
        return cls(peer_id=pid, address=acct.address, chain_id=int(chain_id),
                   signature="0x" + bytes(signed.signature).hex())


# ---------------------------------------------------------------------------------------------------- gossip
def verify_peer_record(record: PeerRecord, peer_id: object, *, chain_id: int | None = None) -> str:
    """The checksum address that signed `record` for `peer_id` (and `chain_id` when given).

    Raises `PeerRecordError` on another peer id or chain, a bad signature, or a signer other than
    `record.address`.
    """
    if record.peer_id != str(peer_id):
        raise PeerRecordError(f"peer record is for {record.peer_id}, not {peer_id}")
    if chain_id is not None and record.chain_id != int(chain_id):
        raise PeerRecordError(f"peer record is for chain {record.chain_id}, not {chain_id}")
    try:
        signer = Account.recover_message(encode_defunct(text=record_message(record.peer_id, record.chain_id)),
                                         signature=record.signature)
    except Exception as err:  # noqa: BLE001 - eth_keys raises several types for junk signatures
        raise PeerRecordError(f"peer record signature is invalid: {err}") from None
    if signer.lower() != record.address.lower():
        raise PeerRecordError(f"peer record for {record.peer_id} claims {record.address} but was signed by {signer}")
    return to_checksum_address(signer)


class Announce(_Msg):
    """A requester asks for bids on a job. `max_price` is per replica, `run_seconds` is the time from the job's
    opening to its result deadline, `window` the reveal/challenge window; bids go to `requester_peer` until
    `bid_until_ms`."""

    type: Literal["announce"] = "announce"
    v: Literal[1] = 1
    chain_id: int = Field(ge=1)
    market: Address
    requester: Address
    requester_peer: PeerIdStr
    requester_addrs: list[Multiaddr] = Field(min_length=1, max_length=8)
    spec_hash: Hex32
    kind: Literal["inference", "train", "finetune", "evaluate", "collab"]
    device: Literal["cpu", "cuda"]
    replicas: int = Field(ge=1, le=15)
    max_price: Wei
    min_collateral: Wei = "0"
    run_seconds: int = Field(ge=1, le=30 * 24 * 3600)
    window: int = Field(ge=1, le=7 * 24 * 3600)
    input_bytes: int = Field(ge=0)
    ts_ms: int = Field(ge=0)
    bid_until_ms: int = Field(ge=0)
    nonce: Hex16
    signature: HexSig | None = None

    @property
    def topic(self) -> str:
        return job_topic(self.kind, self.device)

    @property
    def ann_id(self) -> str:
        """The announcement's id, which bids quote: 0x-hex keccak of its signed body."""
        return "0x" + body_digest(self).hex()

    def signed(self, private_key: Any) -> Announce:
        return self.model_copy(update={"signature": sign_digest(private_key, body_digest(self))})


class Advert(_Msg):
    """A provider's capabilities and prices, bound to its peer id by `record` (a PeerRecord)."""

    type: Literal["advert"] = "advert"
    v: Literal[1] = 1
    chain_id: int = Field(ge=1)
    provider: Address
    peer: PeerIdStr
    addrs: list[Multiaddr] = Field(max_length=8)
    record: dict[str, Any]
    device: str = Field(max_length=128)
    device_class: Literal["cpu", "cuda"]
    memory_mb: int = Field(ge=0)
    torch: str = Field(max_length=64)
    throughput: dict[str, float] = Field(max_length=16)  # e.g. {"gflops": 35.2, "hash_gbps": 2.7}
    prices: dict[str, Wei] = Field(max_length=8)  # per kind
    capacity: int = Field(ge=0, le=1024)
    ts_ms: int = Field(ge=0)
    signature: HexSig | None = None

    def signed(self, private_key: Any) -> Advert:
        return self.model_copy(update={"signature": sign_digest(private_key, body_digest(self))})


# ---------------------------------------------------------------------------------------------------- requests
class Sig(_Msg):
    v: int = Field(ge=0, le=255)
    r: Hex32
    s: Hex32

    def as_tuple(self) -> tuple[int, bytes, bytes]:
        return self.v, bytes.fromhex(self.r[2:]), bytes.fromhex(self.s[2:])

    @classmethod
    def of(cls, v: int, r: bytes, s: bytes) -> Sig:
        return cls(v=int(v), r="0x" + bytes(r).hex(), s="0x" + bytes(s).hex())


class BidOffer(_Msg):
    """A provider's bid for announcement `ann`: `bid` a `SignedBid` (EIP-712, what openJob takes; in JSON the bid
    file format), `record` a `PeerRecord` binding the sending peer to the bid's provider address. Either may be
    given as its JSON dict."""

    type: Literal["bid"] = "bid"
    v: Literal[1] = 1
    ann: Hex32
    bid: SignedBid
    record: PeerRecord
    eta_s: float = Field(ge=0, le=30 * 24 * 3600)  # the provider's estimate of the run time
    device: str = Field(default="", max_length=128)


class Assigned(_Msg):
    """The requester tells a winner it was assigned `index` in job `job_id` (opened by `tx` in `block`)."""

    type: Literal["assigned"] = "assigned"
    v: Literal[1] = 1
    ann: Hex32
    job_id: Hex32
    index: int = Field(ge=0, le=15)
    block: int = Field(ge=0)
    tx: Hex32


class Nudge(_Msg):
    """A hint from the requester that job `job_id` changed on chain (e.g. every commitment is in): the provider
    re-reads the chain at once instead of at its next poll. It carries no authority: nothing is trusted from it."""

    type: Literal["nudge"] = "nudge"
    v: Literal[1] = 1
    job_id: Hex32


class OutputRef(_Msg):
    name: Literal["outputs.safetensors", "manifest.json"]
    blob: BlobIdStr
    size: int = Field(ge=0)


class ResultMsg(_Msg):
    """k = 1: the provider's result hash, EIP-712 signed for `acceptSignedResult`, and where to fetch outputs."""

    type: Literal["result"] = "result"
    v: Literal[1] = 1
    job_id: Hex32
    result: Hex32
    sig: Sig
    outputs: list[OutputRef] = Field(min_length=2, max_length=2)


class CommitMsg(_Msg):
    """k >= 2: participant `index`'s commitment, EIP-712 signed for `commitBatch`."""

    type: Literal["commit"] = "commit"
    v: Literal[1] = 1
    job_id: Hex32
    index: int = Field(ge=0, le=15)
    commitment: Hex32
    sig: Sig


class RevealMsg(_Msg):
    """k >= 2: the opening of participant `index`'s commitment (sent only once every commitment is on chain)."""

    type: Literal["reveal"] = "reveal"
    v: Literal[1] = 1
    job_id: Hex32
    index: int = Field(ge=0, le=15)
    result: Hex32
    salt: Hex32
    outputs: list[OutputRef] = Field(min_length=2, max_length=2)


class BlobRequest(_Msg):
    """Ask for `length` bytes of blob `blob` from `offset`, for job `job_id` (whose parties alone are served).
    `blob` is a `sha256:` blob id, or `spec:<spec hash>` for the job's canonical spec JSON."""

    type: Literal["blob"] = "blob"
    v: Literal[1] = 1
    job_id: Hex32
    blob: Annotated[str, StringConstraints(pattern=r"^(sha256:[0-9a-f]{64}|spec:0x[0-9a-f]{64})$")]
    offset: int = Field(ge=0)
    length: int = Field(ge=1, le=BLOB_CHUNK)


class Ack(_Msg):
    """The reply to every request. A refusal says why twice: `code` for programs, `reason` for people. `code` is
    None on success; a refusal built without one (`Ack(ok=False, reason=...)`) gets `RejectCode.OTHER`."""

    type: Literal["ack"] = "ack"
    v: Literal[1] = 1
    ok: bool
    code: Annotated[RejectCode, Field(strict=False)] | None = None
    reason: str = Field(default="", max_length=512)

    @model_validator(mode="after")
    def _default_code(self) -> Ack:
        if not self.ok and self.code is None:
            object.__setattr__(self, "code", RejectCode.OTHER)
        return self

    @classmethod
    def reject(cls, err: ProtocolError) -> Ack:
        """The refusal of a request that failed a check (its `reason` label becomes the code)."""
        try:
            code = RejectCode(err.reason)
        except ValueError:
            code = RejectCode.MALFORMED
        return cls(ok=False, code=code, reason=str(err)[:500])


GOSSIP_TYPES: dict[str, type[_Msg]] = {"announce": Announce, "advert": Advert}
REQUEST_TYPES: dict[str, type[_Msg]] = {
    "bid": BidOffer, "assigned": Assigned, "nudge": Nudge, "result": ResultMsg, "commit": CommitMsg,
    "reveal": RevealMsg, "blob": BlobRequest, "ack": Ack,
}


def job_topic(kind: str, device: str) -> str:
    if kind not in KINDS:
        raise ProtocolError(f"unknown job kind {kind!r} (expected one of {', '.join(KINDS)})")
    if device not in DEVICES:
        raise ProtocolError(f"unknown device class {device!r} (expected one of {', '.join(DEVICES)})")
    return f"{TOPIC_PREFIX}/jobs/{kind}/{device}"


def decode(data: bytes, expect: type[_Msg] | tuple[type[_Msg], ...], *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Parse one message of the type(s) `expect`. Raises ProtocolError, never anything else."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {max_bytes}", reason="oversized")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ProtocolError(f"not JSON: {str(err)[:80]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message is a JSON object")
    kinds = expect if isinstance(expect, tuple) else (expect,)
    by_type = {k.model_fields["type"].default: k for k in kinds}
    tag = obj.get("type")
    cls = by_type.get(tag) if isinstance(tag, str) else None  # a list or object as type must not raise
    if cls is None:
        raise ProtocolError(f"unexpected message type {str(obj.get('type'))[:32]!r} "
                            f"(expected {', '.join(sorted(by_type))})", reason="type")
    try:
        msg = cls.model_validate(obj)
        canonical_json(msg.to_json())  # what a signature covers must have its one encoding (no int beyond 2^53)
        return msg
    except ValidationError as err:
        raise ProtocolError(f"invalid {obj['type']}: {validation_message(err)}"[:300]) from None
    except (TypeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"invalid {obj['type']}: {str(err)[:120]}") from None


def verify_signed(msg: Any, signer: str) -> None:
    """Check that `msg` carries a signature by `signer`. Raises ProtocolError."""
    if msg.signature is None:
        raise ProtocolError(f"unsigned {msg.type}", reason="unsigned")
    got = recover_digest(body_digest(msg), msg.signature)
    if got.lower() != signer.lower():
        raise ProtocolError(f"{msg.type} claims {to_checksum_address(signer)} but was signed by {got}",
                            reason="signature")


def blob_reply_ok(total: int, chunk: bytes) -> bytes:
    return BLOB_OK + total.to_bytes(8, "big") + chunk


def blob_reply_err(reason: str) -> bytes:
    return BLOB_ERR + reason.encode()[:512]


def parse_blob_reply(data: bytes) -> tuple[int, bytes]:
    """(total size, chunk) of a /agora/blob/1 reply. Raises ProtocolError for an error reply or junk."""
    if data[:1] == BLOB_ERR:
        raise ProtocolError(f"peer refused the blob: {data[1:].decode(errors='replace')}", reason="refused")
    if data[:1] != BLOB_OK or len(data) < 9:
        raise ProtocolError("malformed blob reply")
    return int.from_bytes(data[1:9], "big"), data[9:]


async def fetch_blob(request: Callable[[bytes], Awaitable[bytes]], *, job_id: str, blob: str, limit: int) -> bytes:
    """The whole of `blob` over /agora/blob/1, chunk by chunk: `request(payload) -> reply` sends one BlobRequest
    to the peer. Refuses a total over `limit` bytes, a size that changes mid-transfer and an empty chunk; a
    `sha256:` blob must hash to its id (a `spec:` blob is the caller's to check). Raises ProtocolError (and
    whatever `request` raises)."""
    buf = bytearray()
    total: int | None = None
    while total is None or len(buf) < total:
        req = BlobRequest(job_id=job_id, blob=blob, offset=len(buf), length=BLOB_CHUNK)
        size, chunk = parse_blob_reply(await request(req.encode()))
        if size > limit:
            raise ProtocolError(f"{blob} is {size} bytes, over the {limit}-byte cap", reason="oversized")
        if total is not None and size != total:
            raise ProtocolError(f"{blob}: the peer changed its size mid-transfer", reason="malformed")
        if (not chunk and len(buf) < size) or len(buf) + len(chunk) > size:
            raise ProtocolError(f"{blob}: inconsistent chunk at {len(buf)} of {size}", reason="malformed")
        total = size
        buf += chunk
    data = bytes(buf)
    if blob.startswith("sha256:") and hashlib.sha256(data).hexdigest() != blob[7:]:
        raise ProtocolError(f"{blob}: the bytes received have another sha256", reason="integrity")
    return data


def now_ms() -> int:
    return int(time.time() * 1000)
