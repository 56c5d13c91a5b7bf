"""What every phase of the provider node shares: one `NodeContext` per node.

It holds the config, the account, the store, the blob store, the metrics, the chain layer (`ChainIO`: reads with
a concurrency limit, transactions of the one account under one lock) and, once started, the libp2p host, the
sandbox and the device. The phases (bidding, jobs, serving, collab) each get the context and nothing else of
the agent's, so none of them imports another's module or the agent's.

The node's clock is the chain's: `refresh_chain_time` reads the latest block (number and timestamp) through
`ChainIO.head()` and keeps both here; every deadline decision compares against that timestamp.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from marketplace.blobs import BlobStore
from marketplace.chainio import ChainIO, Head
from marketplace.client import ChainClient
from marketplace.market import Market
from marketplace.p2p import P2PError, P2PHost, PeerRecord
from marketplace.protocol import BLOB_PROTOCOL, fetch_blob

from .config import NodeConfig
from .device import DeviceInfo
from .ops import Metrics
from .store import NodeStore

if TYPE_CHECKING:
    from node.sandbox import Sandbox

#: Seconds one request to a peer (blob chunk, result message) may take.
REQUEST_TIMEOUT_S = 10.0


def dial_addrs(addrs: list[str], peer: str) -> list[str]:
    """Full multiaddrs (with /p2p/<peer>) for a peer announced as `addrs` + `peer`."""
    return [a if "/p2p/" in a else f"{a.rstrip('/')}/p2p/{peer}" for a in addrs]


@dataclass(eq=False)
class NodeContext:
    """The node's shared state. `host`, `sandbox`, `device`, `record` and `nursery` are set by `Agent.run`."""

    config: NodeConfig
    account: LocalAccount
    client: ChainClient
    io: ChainIO
    market: Market
    data_dir: Path
    store: NodeStore
    blobs: BlobStore
    metrics: Metrics
    host: P2PHost | None = None
    sandbox: Sandbox | None = None
    device: DeviceInfo | None = None
    record: PeerRecord | None = None
    nursery: trio.Nursery | None = None
    block: int = 0  # the latest block seen, and its timestamp: the node's clock
    chain_now: int = 0
    stopping: bool = False

    @classmethod
    def create(cls, config: NodeConfig, account: LocalAccount, client: ChainClient, data_dir: Path) -> NodeContext:
        data_dir = Path(data_dir).expanduser().resolve()  # the sandbox worker has another cwd
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(config=config, account=account, client=client, io=ChainIO(client), market=Market(client),
                   data_dir=data_dir, store=NodeStore(data_dir / "node.db"), blobs=BlobStore(data_dir / "blobs"),
                   metrics=Metrics())

    @property
    def address(self) -> str:
        return to_checksum_address(self.account.address)

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    @property
    def market_address(self) -> str:
        return self.client.deployment.market

    @property
    def net(self) -> P2PHost:
        """The running host (only once `Agent.run` opened it)."""
        assert self.host is not None, "the node's host is not open yet"
        return self.host

    @property
    def box(self) -> Sandbox:
        """The warm sandbox (only once `Agent.run` started it)."""
        assert self.sandbox is not None, "the node's sandbox is not started yet"
        return self.sandbox

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the node's nursery."""
        assert self.nursery is not None, "the node is not running"
        self.nursery.start_soon(fn, *args)

    # ------------------------------------------------------------------ chain time
    def note_head(self, head: Head) -> int:
        self.block, self.chain_now = head.number, head.timestamp
        return self.chain_now

    async def refresh_chain_time(self) -> int:
        """The latest block's timestamp (also kept in `chain_now`, its number in `block`)."""
        return self.note_head(await self.io.head())

    # ------------------------------------------------------------------ peers
    async def request_peer(self, addrs: list[str], peer: str, protocol: str, payload: bytes, *,
                           timeout: float = REQUEST_TIMEOUT_S) -> bytes:
        """Send one request to `peer`, trying each of its addresses; raises the last P2PError."""
        last: P2PError | None = None
        for addr in dial_addrs(addrs, peer) or [f"/p2p/{peer}"]:
            try:
                return await self.net.request(addr, protocol, payload, timeout=timeout)
            except P2PError as err:
                last = err
        assert last is not None
        raise last

    async def fetch_blob_from(self, addrs: list[str], peer: str, job_id: str, blob: str, limit: int) -> bytes:
        """A blob of job `job_id` from `peer` (see protocol.fetch_blob: capped, sha256-checked)."""
        async def request(payload: bytes) -> bytes:
            return await self.request_peer(addrs, peer, BLOB_PROTOCOL, payload, timeout=REQUEST_TIMEOUT_S)

        return await fetch_blob(request, job_id=job_id, blob=blob, limit=limit)
