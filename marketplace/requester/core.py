"""What the requester's phases share: the context they work in, and the public types that cross between them.

The requester is a small facade (`engine.Requester`) over one module per protocol phase:

    bidding.py    announce, check arriving bids, rank          -> a `BidWindow`, the chosen `BidReceived`s
    opening.py    openJob + assignment, in one transaction     -> a `JobSession`
    session.py    one opened job: results, commits, reveals, batching, watching, finalizing, outputs,
                  settlement.json; and the one chain poller that wakes the sessions
    serving.py    the blob protocol (inputs to assigned providers) and extension protocols (collab)
    recovery.py   after a crash: jobs left "opening", sessions rebuilt from the store and the chain

Each phase holds a reference to one `RequesterContext`; no phase imports another's private names.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from marketplace import protocol as P
from marketplace.blobs import BlobStore
from marketplace.chainio import ChainIO
from marketplace.errors import AgoraError
from marketplace.market import Market
from marketplace.requester.ranking import Explanation, Offer
from marketplace.requester.store import RequesterStore
from marketplace.types import SignedBid

if TYPE_CHECKING:
    from marketplace.requester.session import JobSession

SETTLE_MARGIN_S = 2  # chain seconds past a deadline before the requester finalizes itself
ASSIGN_TIMEOUT_S = 15  # the most submit waits for winners to acknowledge Assigned
POLL_S = 0.5  # how often the requester's one chain poller reads new market logs and the latest block
WATCH_S = 5.0  # a job's watcher re-reads its job at least this often, and at once when the poller pokes it
RUN_SLACK_S = 30  # added to the spec's wall_seconds for the default run_seconds
EXPIRY_MARGIN_S = 15  # a bid must stay valid this long after the window closes
DEADLINE_SLACK_S = 10  # deadline = open time + run_seconds + this (blocks mine after the time we read)

#: Key in a job row's `timings` of its openJob attempt: from_block, salt (written before "opening"), nonce
#: (before signing), tx (when known after a failure). `recovery.recover_opened` reads it.
OPEN_ATTEMPT = "open_attempt"


class Host(Protocol):
    """What the requester needs of a libp2p host (`marketplace.p2p.open_host` gives one)."""

    @property
    def peer_id(self) -> Any: ...

    @property
    def addrs(self) -> list[str]: ...

    @property
    def gossip(self) -> Any: ...

    def serve(self, protocol: str, handler: Callable[[bytes, ID], Awaitable[bytes]]) -> None: ...

    async def request(self, peer: PeerInfo, protocol: str, payload: bytes, *, timeout: float) -> bytes: ...

    async def connect(self, addr: str, *, timeout: float) -> Any: ...


class Extension(Protocol):
    """A job run by another engine over the requester's host (collaborative training), registered with
    `Requester.register_extension(job_id, ext)`: it serves its own blobs, and the messages of its own protocol
    (`protocol`, a libp2p protocol id; every message is a JSON object naming its `job_id`)."""

    protocol: str

    def serve_blob(self, peer: str, blob: str) -> bytes:
        """The bytes of `blob` for `peer`; raises AgoraError to refuse."""
        ...

    def served(self, n_bytes: int) -> None:
        """`n_bytes` of a blob were sent."""
        ...

    async def on_message(self, payload: bytes, peer: str) -> bytes:
        """One message of the extension's protocol; returns the reply frame."""
        ...


@dataclass
class SubmitOutcome:
    """What `Requester.submit` did. `state` is the store's job state (open, settled, no-bids, failed)."""

    ann_id: str
    state: str
    explanation: Explanation
    job_id: str | None = None
    winners: list[dict[str, Any]] = field(default_factory=list)
    out_dir: str | None = None
    settlement: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("open", "committed", "revealed", "settled")

    def to_json(self) -> dict[str, Any]:
        return {"annId": self.ann_id, "jobId": self.job_id, "state": self.state, "winners": self.winners,
                "explanation": self.explanation.to_json(), "outDir": self.out_dir, "settlement": self.settlement,
                "error": self.error}


@dataclass
class BidReceived:
    """One bid that arrived in a bid window: the ranking's view (`offer`), the signed bid when it parsed, the
    peer it came from and its store row."""

    offer: Offer
    signed: SignedBid | None
    peer: str
    bid_row: int


@dataclass
class BidWindow:
    """A job in its bid window: the signed announcement and the bids received so far."""

    ann: P.Announce
    k: int
    max_price: int
    min_collateral: int
    chain_ts: int  # chain time when announced
    wall_ts: float
    received: list[BidReceived] = field(default_factory=list)
    enough: trio.Event = field(default_factory=trio.Event)
    closed: bool = False

    def est_chain_now(self) -> int:
        return self.chain_ts + int(time.time() - self.wall_ts)

    def acceptable(self) -> int:
        return sum(1 for r in self.received if r.offer.refusal is None)


@dataclass
class Winner:
    """A provider assigned to an opened job: its index among the workers, address, peer and terms."""

    index: int
    provider: str
    peer: str
    price: int
    collateral: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "provider": self.provider, "peer": self.peer, "price": str(self.price),
                "collateral": str(self.collateral)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Winner:
        return cls(index=int(d["index"]), provider=d["provider"], peer=d["peer"], price=int(d["price"]),
                   collateral=int(d["collateral"]))


@dataclass
class RequesterContext:
    """The resources every phase of one requester works with, and the registries they share."""

    market: Market
    chain: ChainIO
    store: RequesterStore
    blobs: BlobStore
    node: Host
    nursery: trio.Nursery
    progress: Callable[[str], None]
    windows: dict[str, BidWindow] = field(default_factory=dict)  # announcement id -> its open bid window
    sessions: dict[str, JobSession] = field(default_factory=dict)  # 0x job id -> its session
    extensions: dict[str, Extension] = field(default_factory=dict)  # 0x job id -> the engine running it

    @property
    def address(self) -> str:
        return self.market.address

    @property
    def chain_id(self) -> int:
        return self.market.client.chain_id

    @property
    def market_address(self) -> str:
        return self.market.client.deployment.market

    async def request(self, peer: str, protocol: str, payload: bytes, *, timeout: float) -> bytes:
        """One request/reply to a provider that dialed us (the connection, or the peerstore, has its address)."""
        return await self.node.request(PeerInfo(ID.from_base58(peer), []), protocol, payload, timeout=timeout)

    async def fetch(self, peer: str, job_id: str, blob: str, limit: int) -> bytes:
        """A blob from a provider, capped at `limit` bytes and sha256-checked (see protocol.fetch_blob)."""
        async def request(payload: bytes) -> bytes:
            return await self.request(peer, P.BLOB_PROTOCOL, payload, timeout=30)

        return await P.fetch_blob(request, job_id=job_id, blob=blob, limit=limit)


def one_line(err: BaseException) -> str:
    """An error as one line for a store row or a progress message."""
    text = str(err) if isinstance(err, AgoraError) else f"{type(err).__name__}: {err}"
    return (text.splitlines() or [type(err).__name__])[0][:300]


def default_out_dir(hex_id: str) -> Path:
    return Path.cwd() / f"result-{hex_id[2:10]}"
