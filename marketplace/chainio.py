"""Async access to one chain for one account: the layer the requester, the provider node and the collab
coordinator share (trio).

web3.py is synchronous, so every call runs in a worker thread. `ChainIO` adds what each side used to write for
itself:

- `read`: a chain read, with a concurrency limit (a burst of reads must not start a thread each);
- `send`: a transaction of this account, one at a time (ONE lock per account and trio run, shared by every
  `ChainIO` of that account), retried once on `NonceTooLowError` (another process of the same account used the
  cached nonce; the client re-reads it from the `pending` count after any failed send);
- `head`: the latest block's number and timestamp; `next_block_time`: the time the next block will have as
  well as the node can tell (an idle development chain's latest block can be minutes old);
- `follower`: a log follower over `eth_getLogs` in bounded chunks (public RPCs cap block ranges), with a cursor
  that the caller may persist.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from marketplace.client import ChainClient
from marketplace.errors import NonceTooLowError

T = TypeVar("T")

#: The most blocks one eth_getLogs asks for: public RPC endpoints refuse ranges past 1,000-10,000 blocks.
LOG_CHUNK = 2_000

# One transaction lock per (trio run, chain id, account): a trio.Lock must not be shared across runs.
_TX_LOCKS: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], trio.Lock]] = weakref.WeakKeyDictionary()


def _tx_lock(chain_id: int, address: str) -> trio.Lock:
    token = trio.lowlevel.current_trio_token()
    locks = _TX_LOCKS.setdefault(token, {})
    return locks.setdefault((chain_id, address.lower()), trio.Lock())


@dataclass(frozen=True)
class Head:
    """The latest block: its number and timestamp (chain seconds)."""

    number: int
    timestamp: int


class ChainIO:
    """Reads and transactions of one `ChainClient` (and its account, if any) from trio code."""

    def __init__(self, client: ChainClient, *, max_reads: int = 4) -> None:
        self.client = client
        self._reads = trio.CapacityLimiter(max_reads)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a worker thread, at most `max_reads` at once. Abandoned on cancellation (a
        read has no effect to wait for)."""
        # abandon_on_cancel: trio has it; the stale trio-stubs of trio-typing (a libp2p dependency) lack it.
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._reads,
                                             abandon_on_cancel=True)  # type: ignore[call-arg]

    async def send(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` (which sends transactions of this account) under the account's transaction lock,
        retried once on `NonceTooLowError`. Not abandoned on cancellation: the receipt is waited for."""
        async with _tx_lock(self.client.chain_id, self.client.address):
            call = functools.partial(fn, *args, **kwargs)
            try:
                return await trio.to_thread.run_sync(call)
            except NonceTooLowError:
                return await trio.to_thread.run_sync(call)

    async def head(self) -> Head:
        block = await self.read(self.client.w3.eth.get_block, "latest")
        return Head(number=int(block["number"]), timestamp=int(block["timestamp"]))

    async def next_block_time(self) -> int:
        """The timestamp the next block will have, as well as the node can tell: the later of the latest and
        the pending block's (some nodes serve no pending block)."""
        return await self.read(self.client.next_block_time)

    def follower(self, *, address: str, topics: Sequence[Any] | None = None, start: int | None = None,
                 chunk: int = LOG_CHUNK, save: Callable[[int], None] | None = None) -> LogFollower:
        """A `LogFollower` of `address`'s logs (optionally filtered by `topics`), after block `start` (None: from
        the head at the first poll). `save(block)` is called with the cursor after every chunk read."""
        return LogFollower(self, address=address, topics=topics, cursor=start, chunk=chunk, save=save)


class LogFollower:
    """Follows one contract's logs: each `poll()` returns the head and every new log up to it, read in chunks of
    at most `chunk` blocks; the cursor (last block read) advances chunk by chunk, so an RPC failure mid-way
    resumes where it stopped."""

    def __init__(self, io: ChainIO, *, address: str, topics: Sequence[Any] | None, cursor: int | None, chunk: int,
                 save: Callable[[int], None] | None) -> None:
        self.io = io
        self.address = address
        self.topics = list(topics) if topics else None
        self.cursor = cursor
        self.chunk = max(1, chunk)
        self._save = save

    def reset(self) -> None:
        """Start from the head again at the next poll (nothing to follow meanwhile)."""
        self.cursor = None

    async def poll(self, *, on_chunk: Callable[[list[Any]], Any] | None = None) -> tuple[Head, list[Any]]:
        """(head, new logs). With `on_chunk`, each chunk's logs are handed to it (awaited if it returns an
        awaitable) before the cursor moves past them, and the returned list is empty."""
        head = await self.io.head()
        if self.cursor is None:
            self.cursor = head.number
            return head, []
        out: list[Any] = []
        w3 = self.io.client.w3
        while self.cursor < head.number:
            to = min(head.number, self.cursor + self.chunk)
            query: dict[str, Any] = {"address": self.address, "fromBlock": self.cursor + 1, "toBlock": to}
            if self.topics:
                query["topics"] = self.topics
            logs = list(await self.io.read(w3.eth.get_logs, query))
            if on_chunk is not None:
                res = on_chunk(logs)
                if hasattr(res, "__await__"):
                    await res
            else:
                out.extend(logs)
            self.cursor = to
            if self._save is not None:
                self._save(to)
        return head, out
