"""The provider agent: one trio program that bids on announced jobs, runs what it wins and gets paid.

    announce (gossip) -> validate + funds check -> strategy -> signed BidOffer -> store
    Assigned (stream) or JobOpened/JobAssigned (chain poll) -> check on chain -> job row -> drive(job)
    drive: fetch spec + blobs -> Sandbox.run -> k = 1: ResultMsg | k >= 2: persist salt, CommitMsg, RevealMsg
           -> chain fallbacks (submitResult / commit / reveal / finalize, by chain time) -> settled, earnings

Every step reads its state from the store and the chain, so a SIGKILLed node restarted on the same data dir
picks each unsettled job up where it was (see docs/node.md). Web3 is synchronous: reads run in worker threads
(a capacity limiter keeps the RPC from being flooded) and transactions of the one account go through one lock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from marketplace.blobs import BlobStore, blob_id_of
from marketplace.client import ChainClient
from marketplace.collab.protocol import COLLAB_PROTOCOL, CollabAssigned
from marketplace.eip712 import sign_bid, sign_commit, sign_result
from marketplace.errors import AgoraError
from marketplace.market import Market
from marketplace.p2p import P2PError, PeerRecord, load_or_create_key, open_host
from marketplace.protocol import (
    ADVERT_TOPIC,
    ASSIGN_PROTOCOL,
    BID_PROTOCOL,
    BLOB_PROTOCOL,
    MAX_ANNOUNCE_BYTES,
    RESULT_PROTOCOL,
    Ack,
    AdvertValidator,
    Advert,
    Announce,
    AnnounceValidator,
    Assigned,
    BidOffer,
    BlobRequest,
    CommitMsg,
    Nudge,
    OutputRef,
    ProtocolError,
    ResultMsg,
    RevealMsg,
    Sig,
    blob_reply_err,
    blob_reply_ok,
    canonical,
    decode,
    fetch_blob,
    job_topic,
)
from marketplace.spec import JobSpec, parse_spec
from marketplace.types import Assignment, Bid, JobPhase, b32, commitment_for

from node.errors import AgentError

from .config import NodeConfig
from .ops import Metrics, OpsServer
from .store import SENT_COMMIT, SENT_RESULT, SENT_REVEAL, BidRow, JobRow, NodeStore
from .strategy import BidContext, Decline, Strategy, TableStrategy

log = logging.getLogger("agora.node")

BID_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 10.0
BID_EXPIRY_S = 120
MAX_DEADLINE_SLACK_S = 60
ADVERT_EVERY_S = 30.0
CHAIN_POLL_S = 0.5
JOB_POLL_S = 1.0
FUNDS_CACHE_S = 3.0
MAX_SPEC_BYTES = 1 << 20
LOG_RANGE = 2000  # blocks per eth_getLogs call


@dataclass(frozen=True)
class DeviceInfo:
    """What the node advertises: measured once at start."""

    name: str
    device_class: str
    memory_mb: int
    torch: str
    gflops: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_device(config: NodeConfig) -> DeviceInfo:
    """torch version, device name and memory, and a quick float32 matmul throughput (~0.2 s)."""
    import torch

    cls = config.device_class(torch.cuda.is_available())
    if cls == "cuda":
        if not torch.cuda.is_available():
            raise AgentError("device: cuda is configured but torch sees no GPU")
        props = torch.cuda.get_device_properties(0)
        name, memory_mb, dev = props.name, int(props.total_memory // 2**20), torch.device("cuda")
    else:
        import platform

        name = platform.processor() or platform.machine() or "cpu"
        try:
            memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
        except (ValueError, OSError):
            memory_mb = 0
        dev = torch.device("cpu")
    n, reps = 512, 8
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    (a @ b).sum().item()  # warm up kernels
    t0 = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()
    seconds = max(time.perf_counter() - t0, 1e-9)
    return DeviceInfo(name=name[:128], device_class=cls, memory_mb=memory_mb, torch=torch.__version__[:64],
                      gflops=round(2 * n**3 * reps / seconds / 1e9, 2))


def dial_addrs(addrs: list[str], peer: str) -> list[str]:
    """Full multiaddrs (with /p2p/<peer>) for a peer announced as `addrs` + `peer`."""
    return [a if "/p2p/" in a else f"{a.rstrip('/')}/p2p/{peer}" for a in addrs]


class Agent:
    """One provider node. Build it with everything unlocked and connected, then `await agent.run(ready)`."""

    def __init__(self, config: NodeConfig, account: LocalAccount, client: ChainClient, *, data_dir: Path,
                 key_path: Path, strategy: Strategy | None = None) -> None:
        self.config = config
        self.account = account
        self.client = client
        self.market = Market(client)
        self.address = to_checksum_address(account.address)
        self.chain_id = client.chain_id
        self.market_address = client.deployment.market
        self.data_dir = Path(data_dir).expanduser().resolve()  # the sandbox worker has another cwd
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key_path = key_path
        self.store = NodeStore(self.data_dir / "node.db")
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.strategy: Strategy = strategy or TableStrategy(config)
        self.metrics = Metrics()
        self.announces = AnnounceValidator(chain_id=self.chain_id, market=self.market_address)
        self.adverts = AdvertValidator(chain_id=self.chain_id)
        self.tx_lock = trio.Lock()
        self.claim_lock = trio.Lock()
        self.reads = trio.CapacityLimiter(4)
        self.slots = trio.CapacityLimiter(config.capacity)
        self.sandbox: Any = None
        self.device: DeviceInfo | None = None
        self.host: Any = None
        self.record: PeerRecord | None = None
        self.started = time.monotonic()
        self.block = 0
        self.chain_now = 0
        self.stopping = False
        self._funds: dict[str, tuple[float, int]] = {}
        self._stake: tuple[float, int] | None = None
        self._driving: set[str] = set()
        self._wake: dict[str, trio.Event] = {}
        self._intact: set[tuple[str, str, int, int]] = set()  # output files checked against their blob id  # per job: set by a Nudge to re-read the chain at once
        self._nursery: trio.Nursery | None = None
        self.ops: OpsServer | None = None
        self.collab: dict[str, Any] = {}  # collab job id -> CollabParticipant
        self._collab_chain: Any = None

    # ------------------------------------------------------------------ chain helpers
    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A chain read in a worker thread (web3 is synchronous)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.reads,
                                             abandon_on_cancel=True)

    async def transact(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A transaction of this account: one at a time (the client assigns nonces)."""
        async with self.tx_lock:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def refresh_chain_time(self) -> int:
        block = await self.read(self.client.w3.eth.get_block, "latest")
        self.block, self.chain_now = int(block["number"]), int(block["timestamp"])
        return self.chain_now

    # ------------------------------------------------------------------ start-up
    def _warm_sandbox(self) -> Any:
        from node.sandbox import Sandbox

        sandbox = Sandbox(self.blobs, workers_dir=self.data_dir / "sandbox")
        sandbox.warm()
        return sandbox

    async def ensure_registered(self, peer_id: Any) -> None:
        """Register with `config.stake` (approving the registry first) when this account is not a provider."""
        info = await self.read(self.market.provider_info, self.address)
        if info["registered"]:
            return
        stake = self.config.stake_wei
        have = await self.read(self.market.token_balance, self.address)
        if have < stake:
            raise AgentError(f"{self.address} is not a registered provider and holds {have} wei of tokens, "
                             f"less than the configured stake {self.config.stake} tokens")
        meta = keccak(canonical({"kinds": self.config.kinds, "prices": dict(self.config.prices)}))
        log.info("registering as a provider with stake %s tokens", self.config.stake)
        await self.transact(self.market.ensure_allowance, self.client.deployment.registry, stake)
        await self.transact(self.market.register, stake, peer_id.to_bytes(), meta)

    async def run(self, ready: Callable[[dict[str, Any]], None]) -> None:
        """Run until SIGINT / SIGTERM; `ready(info)` is called once the node bids (the "ready" line)."""
        key = load_or_create_key(self.key_path)
        try:
            self.device = await trio.to_thread.run_sync(measure_device, self.config)
            self.sandbox = await trio.to_thread.run_sync(self._warm_sandbox)
            await self.refresh_chain_time()
            async with open_host(key=key, gossip=True, listen=self.config.listen) as host:
                self.host = host
                self.record = PeerRecord.sign(self.account.key, host.peer_id, self.chain_id)
                await self.ensure_registered(host.peer_id)
                host.serve(ASSIGN_PROTOCOL, self.on_assigned)
                host.serve(COLLAB_PROTOCOL, self.on_collab)
                host.serve(BLOB_PROTOCOL, self.on_blob_request, timeout=REQUEST_TIMEOUT_S)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._start_discovery(nursery)
                    topics = await self._subscribe(nursery)
                    nursery.start_soon(self.advert_loop)
                    nursery.start_soon(self.chain_loop)
                    nursery.start_soon(self.peers_loop)
                    for row in self.store.unsettled_jobs():
                        log.info("resuming job %s (state %s)", row.job_id, row.state)
                        self.spawn(row.job_id)
                    self._resume_collab_claims(nursery)
                    if self.config.auto_withdraw_wei is not None:
                        nursery.start_soon(self.maybe_withdraw)  # earnings settled while the node was down
                    self._start_ops()
                    ready({"event": "ready", "address": self.address, "peer_id": str(host.peer_id),
                           "addrs": host.addrs, "ops": self.ops.url if self.ops else None, "topics": topics,
                           "device": self.device.to_json()})
                    await self._wait_for_signal()
                    self.stopping = True
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
        finally:
            await self._close()

    def _resume_collab_claims(self, nursery: trio.Nursery) -> None:
        """Receipts of collab jobs from before a restart: make sure they are paid (claim if settled short)."""
        from marketplace.collab.protocol import Receipt

        from .collab import claim_until_paid, mark_saved, saved_claims

        docs = saved_claims(self.data_dir)
        if not docs or not self.client.deployment.collab:
            return
        if self._collab_chain is None:
            from marketplace.collab.chain import CollabChain

            self._collab_chain = CollabChain(self.client)
        for doc in docs:
            log.info("collab job %s: checking that receipt %s is paid", doc["job_id"], doc["receipt"]["count"])
            nursery.start_soon(claim_until_paid, self, self._collab_chain, doc["job_id"], int(doc["index"]),
                               Receipt.model_validate(doc["receipt"]),
                               functools.partial(mark_saved, self.data_dir, doc["job_id"]))

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            if self.ops is not None:
                self.ops.stop()
            if self.sandbox is not None:
                # A job still running holds the sandbox's lock; its worker dies with us (EOF on its pipe).
                with trio.move_on_after(5):
                    await trio.to_thread.run_sync(self.sandbox.close, abandon_on_cancel=True)
            self.store.close()

    async def _wait_for_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                log.info("received %s", signal.Signals(sig).name)
                return

    def _start_ops(self) -> None:
        if self.config.ops_port < 0:
            return
        self.ops = OpsServer(self.config.ops_port, metrics=self.metrics, health=self.health,
                             jobs=lambda: [j.to_json() for j in self.store.jobs()]
                             + [c.to_json() for c in self.collab.values()])
        self.ops.start()

    async def _start_discovery(self, nursery: trio.Nursery) -> None:
        """Rendezvous discovery when marketplace.p2p.discovery exists; else dial the bootstrap peers directly."""
        try:
            from marketplace.p2p.discovery import maintain_peers  # type: ignore[import-not-found]
        except ImportError:
            maintain_peers = None
        if maintain_peers is not None:
            await nursery.start(maintain_peers, self.host, list(self.config.bootstrap))
            return
        # TODO(discovery): drop this fallback once marketplace.p2p.discovery ships maintain_peers.
        for addr in self.config.bootstrap:
            try:
                await self.host.connect(addr, timeout=5)
                log.info("connected to bootstrap %s", addr)
            except P2PError as err:
                log.warning("bootstrap %s unreachable: %s", addr, err)

    async def _subscribe(self, nursery: trio.Nursery) -> list[str]:
        assert self.device is not None
        topics = []
        for kind in self.config.kinds:
            if kind == "collab" and not self.client.deployment.collab:
                log.warning("this deployment has no CollabMarket: not taking collab jobs (redeploy to get one)")
                continue
            topic = job_topic(kind, self.device.device_class)
            self.host.gossip.set_validator(topic, functools.partial(self.validate_announce, topic))
            sub = await self.host.gossip.subscribe(topic)
            nursery.start_soon(self.announce_loop, sub)
            topics.append(topic)
        self.host.gossip.set_validator(ADVERT_TOPIC, self.validate_advert)
        adverts = await self.host.gossip.subscribe(ADVERT_TOPIC)
        nursery.start_soon(self._drain, adverts)
        return topics + [ADVERT_TOPIC]

    @staticmethod
    async def _drain(sub: Any) -> None:
        """Adverts of other providers: this node relays them (mesh member) but has no use for them."""
        async for _ in sub:
            pass

    # ------------------------------------------------------------------ ops
    def health(self) -> dict[str, Any]:
        peers = len(self.host.connected_peers()) if self.host is not None else 0
        return {"ok": not self.stopping, "address": self.address,
                "peer_id": str(self.host.peer_id) if self.host is not None else None, "peers": peers,
                "block": self.block, "chain_time": self.chain_now,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "jobs": self.store.state_counts()}

    async def peers_loop(self) -> None:
        while True:
            self.metrics.peers.set(len(self.host.connected_peers()))
            await trio.sleep(2)

    # ------------------------------------------------------------------ adverts
    def advert(self) -> Advert:
        assert self.device is not None and self.record is not None
        prices = {k: str(self.config.price_wei(k)) for k in self.config.kinds}
        return Advert(chain_id=self.chain_id, provider=self.address, peer=str(self.host.peer_id),
                      addrs=self.host.addrs[:8], record=self.record.to_json(), device=self.device.name,
                      device_class=self.device.device_class, memory_mb=self.device.memory_mb,  # type: ignore[arg-type]
                      torch=self.device.torch, throughput={"gflops": self.device.gflops}, prices=prices,
                      capacity=self.config.capacity, ts_ms=int(time.time() * 1000)).signed(self.account.key)

    async def advert_loop(self) -> None:
        while True:
            try:
                await self.host.gossip.publish(ADVERT_TOPIC, self.advert().encode())
            except Exception as err:  # noqa: BLE001 - no peers yet, or a transient pubsub error: try again later
                log.debug("advert not published: %s", err)
            await trio.sleep(ADVERT_EVERY_S)

    def validate_advert(self, data: bytes, forwarder: Any) -> bool:
        try:
            self.adverts.check(data)
            return True
        except ProtocolError as err:
            self.metrics.rejected.labels(reason=err.reason).inc()
            return False

    # ------------------------------------------------------------------ announcements
    async def validate_announce(self, topic: str, data: bytes, forwarder: Any) -> bool:
        """Gossip validator: what this node relays and acts on. Never raises (a rejection is counted)."""
        try:
            ann = self.announces.check(data, topic)
        except ProtocolError as err:
            self.metrics.rejected.labels(reason=err.reason).inc()
            log.info("dropped an announcement on %s: %s", topic, err)
            return False
        try:
            funded = await self.requester_funds(ann.requester, collab=ann.kind == "collab") >= \
                int(ann.max_price) * ann.replicas
        except AgoraError as err:
            log.warning("funds check failed: %s", err)
            funded = False
        if not funded:
            self.metrics.rejected.labels(reason="funds").inc()
            log.info("dropped announcement %s: requester %s cannot pay %s x %d", ann.ann_id[:10], ann.requester,
                     ann.max_price, ann.replicas)
        return funded

    async def requester_funds(self, requester: str, *, collab: bool = False) -> int:
        """market balance + min(token balance, allowance to the market), cached FUNDS_CACHE_S per requester.
        A collab job's escrow comes from the requester's tokens (CollabMarket approves and pulls them when the
        job opens), so for `collab` the token balance is what counts."""
        key = requester.lower() + (":collab" if collab else "")
        hit = self._funds.get(key)
        if hit is not None and time.monotonic() - hit[0] < FUNDS_CACHE_S:
            return hit[1]

        def _read() -> int:
            m = self.market
            if collab:
                return m.token_balance(requester)
            return m.market_balance(requester) + min(m.token_balance(requester),
                                                     m.allowance(requester, self.market_address))

        value = int(await self.read(_read))
        self._funds[key] = (time.monotonic(), value)
        if len(self._funds) > 10_000:
            self._funds.clear()
        return value

    async def announce_loop(self, sub: Any) -> None:
        async for msg in sub:
            if self.stopping:
                return
            try:  # already validated by validate_announce; decode once more for the typed message
                ann = decode(msg.data, Announce, max_bytes=MAX_ANNOUNCE_BYTES)
            except ProtocolError:
                continue
            assert self._nursery is not None
            self._nursery.start_soon(self.consider, ann)

    async def free_stake(self) -> int:
        hit = self._stake
        if hit is not None and time.monotonic() - hit[0] < FUNDS_CACHE_S:
            return hit[1]
        info = await self.read(self.market.provider_info, self.address)
        value = int(info["stake"]) - int(info["locked"]) - int(info["unbonding"])  # as requesters count it
        self._stake = (time.monotonic(), value)
        return value

    async def context(self) -> BidContext:
        assert self.device is not None
        return BidContext(free_capacity=self.config.capacity - self.store.active_count(),
                          free_stake=await self.free_stake(), served_kinds=frozenset(self.config.kinds),
                          device_class=self.device.device_class)

    async def consider(self, ann: Announce) -> None:
        """Offer or decline one valid announcement. Never raises."""
        try:
            decision = self.strategy.decide(ann, await self.context())
            if isinstance(decision, Decline):
                self.metrics.bids.labels(outcome="declined").inc()
                self.metrics.declines.labels(reason=decision.reason).inc()
                log.info("declined %s (%s %s): %s", ann.ann_id[:10], ann.kind, ann.device, decision.reason)
                return
            if decision.counter:
                self.metrics.declines.labels(reason="price").inc()  # declined at their price, countered at ours
                log.info("counter-offer on %s: our price %s > max %s", ann.ann_id[:10], decision.price, ann.max_price)
            collateral = 0 if ann.kind == "collab" else decision.collateral  # CollabMarket takes no collateral
            await self.send_bid(ann, decision.price, collateral, decision.run_seconds, decision.min_window)
        except trio.Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - one bad announcement must not stop the node
            log.warning("bidding on %s failed: %s: %s", ann.ann_id[:10], type(err).__name__, err)

    def make_bid(self, ann: Announce, price: int, collateral: int, run_seconds: int, min_window: int) -> Bid:
        """The bid's times are chain times: wall times from the announcement are shifted by chain - wall."""
        offset = self.chain_now - time.time()
        ann_ts = int(ann.ts_ms / 1000 + offset)
        window = max(0, (ann.bid_until_ms - ann.ts_ms) // 1000)
        return Bid(spec_hash=b32(ann.spec_hash), requester=ann.requester, provider=self.address, price=price,
                   collateral=collateral, run_seconds=run_seconds, min_window=min_window,
                   max_deadline=ann_ts + window + ann.run_seconds + MAX_DEADLINE_SLACK_S,
                   expiry=self.chain_now + BID_EXPIRY_S, nonce=int.from_bytes(os.urandom(32), "big"))

    async def send_bid(self, ann: Announce, price: int, collateral: int, run_seconds: int, min_window: int) -> None:
        assert self.record is not None and self.device is not None
        await self.refresh_chain_time()
        bid = self.make_bid(ann, price, collateral, run_seconds, min_window)
        signed = sign_bid(self.account, bid, chain_id=self.chain_id, market=self.market_address)
        offer = BidOffer(ann=ann.ann_id, bid=signed.to_json(), record=self.record.to_json(),
                         eta_s=float(run_seconds), device=self.device.name)
        # Recorded before it leaves: a win must be recognised even if the node dies right after sending.
        self.store.add_bid(BidRow(nonce=bid.nonce, ann_id=ann.ann_id, spec_hash=ann.spec_hash.lower(),
                                  requester=to_checksum_address(ann.requester), requester_peer=ann.requester_peer,
                                  requester_addrs=list(ann.requester_addrs), kind=ann.kind, price=price,
                                  collateral=collateral, run_seconds=run_seconds, expiry=bid.expiry,
                                  announce=json.loads(ann.encode())))
        try:
            reply = await self.request_peer(ann.requester_addrs, ann.requester_peer, BID_PROTOCOL, offer.encode(),
                                            timeout=BID_TIMEOUT_S)
            ack: Ack = decode(reply, Ack)
        except (P2PError, ProtocolError) as err:
            log.warning("bid for %s not delivered: %s", ann.ann_id[:10], err)
            return
        if ack.ok:
            log.info("bid %s tokens for %s (%s) delivered", price / 10**18, ann.ann_id[:10], ann.kind)
        else:
            log.info("bid for %s refused: %s", ann.ann_id[:10], ack.reason)
            self.store.set_bid_outcome(bid.nonce, "lost")
            self.metrics.bids.labels(outcome="lost").inc()

    async def request_peer(self, addrs: list[str], peer: str, protocol: str, payload: bytes, *,
                           timeout: float = REQUEST_TIMEOUT_S) -> bytes:
        """Send one request to `peer`, trying each of its addresses; raises the last P2PError."""
        last: P2PError | None = None
        for addr in dial_addrs(addrs, peer) or [f"/p2p/{peer}"]:
            try:
                return await self.host.request(addr, protocol, payload, timeout=timeout)
            except P2PError as err:
                last = err
        assert last is not None
        raise last

    # ------------------------------------------------------------------ assignment
    async def on_assigned(self, payload: bytes, peer: Any) -> bytes:
        try:
            msg: Assigned | Nudge | CollabAssigned = decode(payload, (Assigned, Nudge, CollabAssigned))
        except ProtocolError as err:
            self.metrics.rejected.labels(reason=err.reason).inc()
            return Ack(ok=False, reason=str(err)[:500]).encode()
        if isinstance(msg, CollabAssigned):
            ok, reason = await self.join_collab(msg)
            return Ack(ok=ok, reason=reason[:500]).encode()
        if isinstance(msg, Nudge):  # only a hint: the job's driver re-reads the chain and trusts nothing else
            event = self._wake.get(msg.job_id.lower())
            if event is not None:
                event.set()
            return Ack(ok=event is not None, reason="" if event is not None else "unknown job").encode()
        ok, reason = await self.claim(msg.job_id, index=msg.index)
        return Ack(ok=ok, reason=reason[:500]).encode()

    async def join_collab(self, msg: CollabAssigned) -> tuple[bool, str]:
        """Start a collaborative training participant, once the chain confirms the assignment."""
        from .collab import CollabParticipant

        job_id = msg.job_id.lower()
        if job_id in self.collab:
            return True, "already known"
        bid = next((b for b in self.store.bids_for(msg.ann) if b.kind == "collab"), None)
        if bid is None:
            return False, "no collab bid of this node for that announcement"
        if self._collab_chain is None:
            from marketplace.collab.chain import CollabChain

            try:
                self._collab_chain = CollabChain(self.client)
            except AgoraError as err:  # a deployment from before CollabMarket
                return False, str(err)
        if self._collab_chain.address.lower() != msg.collab.lower():
            return False, f"collab contract {msg.collab} is not the deployment's {self._collab_chain.address}"
        part = CollabParticipant(agent=self, msg=msg, bid=bid, chain=self._collab_chain)
        try:
            await part.verify_assignment()
        except AgoraError as err:
            return False, str(err)
        self.collab[job_id] = part
        self.store.set_bid_outcome(bid.nonce, "won", job_id)
        self.metrics.bids.labels(outcome="won").inc()
        log.info("joined collab job %s as participant %d", job_id, msg.index)
        assert self._nursery is not None
        self._nursery.start_soon(part.run)
        return True, "ok"

    async def on_collab(self, payload: bytes, peer: Any) -> bytes:
        """Round messages pushed by a collab job's requester."""
        try:
            job_id = str(json.loads(payload).get("job_id", "")).lower()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return Ack(ok=False, reason="not a JSON object").encode()
        part = self.collab.get(job_id)
        if part is None:
            return Ack(ok=False, reason="unknown job").encode()
        return part.take(payload).encode()

    async def claim(self, job_id: str, *, index: int | None = None) -> tuple[bool, str]:
        """Take job `job_id` if the chain shows one of our pending bids assigned in it."""
        job_id = job_id.lower()
        async with self.claim_lock:
            if self.store.job(job_id) is not None:
                return True, "already known"
            try:
                view = await self.read(self.market.job, b32(job_id))
            except AgoraError as err:
                return False, f"job not found on chain: {err}"
            job = view.job
            if job is None or view.settled:
                return False, "job is settled"
            mine = [i for i, w in enumerate(job.workers) if w.provider == self.address]
            if index is not None:
                if index not in mine:
                    return False, f"worker {index} of {job_id} is not {self.address}"
                mine = [index]
            if not mine:
                return False, f"{self.address} is not a worker of {job_id}"
            spec_hash = "0x" + job.spec_hash.hex()
            for i in mine:
                w = job.workers[i]
                bid = next((b for b in self.store.unclaimed_bids(spec_hash)
                            if b.requester == job.requester and b.price == w.price
                            and b.collateral == w.collateral), None)
                if bid is not None:
                    break
            else:
                return False, "no bid of this node matches the assignment (spec hash, requester, price)"
            row = JobRow(job_id=job_id, ann_id=bid.ann_id, spec_hash=spec_hash, kind=bid.kind, idx=i,
                         replicas=job.replicas, price=w.price, collateral=w.collateral, requester=job.requester,
                         requester_peer=bid.requester_peer, requester_addrs=bid.requester_addrs,
                         deadline=job.deadline, window=job.window, bid_nonce=bid.nonce)
            if self.store.add_job(row):
                self.store.set_bid_outcome(bid.nonce, "won", job_id)
                self.metrics.bids.labels(outcome="won").inc()
                self.metrics.jobs.labels(state="assigned").inc()
                log.info("assigned job %s (worker %d of %d, %s)", job_id, i, job.replicas, bid.kind)
                self.spawn(job_id)
            return True, "ok"

    async def chain_loop(self) -> None:
        """Follow the chain: time, our assignments (a lost Assigned message still gets the job run), expiries."""
        start = self.store.get_meta("last_block")
        last = int(start) if start is not None else self.block
        opened = self.client.market.events.JobOpened()
        assigned = self.client.market.events.JobAssigned()
        while True:
            try:
                await self.refresh_chain_time()
                while last < self.block:
                    to = min(self.block, last + LOG_RANGE)
                    for event in (opened, assigned):
                        logs = await self.read(functools.partial(event.get_logs, from_block=last + 1, to_block=to))
                        for lg in logs:
                            workers = [Assignment.from_abi(w) for w in lg["args"]["workers"]]
                            if any(w.provider == self.address for w in workers):
                                ok, why = await self.claim("0x" + bytes(lg["args"]["jobId"]).hex())
                                if not ok:
                                    log.info("job %s names this node but: %s", bytes(lg["args"]["jobId"]).hex(), why)
                    last = to
                    self.store.set_meta("last_block", str(last))
                lost = self.store.expire_bids(self.chain_now)
                if lost:
                    self.metrics.bids.labels(outcome="lost").inc(lost)
            except trio.Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - an RPC hiccup must not stop the node
                log.warning("chain poll failed: %s: %s", type(err).__name__, err)
            await trio.sleep(CHAIN_POLL_S)

    # ------------------------------------------------------------------ one job
    def spawn(self, job_id: str) -> None:
        if job_id in self._driving or self._nursery is None:
            return
        self._driving.add(job_id)
        self._wake.setdefault(job_id, trio.Event())
        self._nursery.start_soon(self.drive, job_id)

    async def drive(self, job_id: str) -> None:
        """Take one job from its stored state to settlement; retries every step until it is final."""
        try:
            while True:
                row = self.store.job(job_id)
                if row is None or row.state in ("settled", "failed"):
                    return
                try:
                    if row.state in ("assigned", "running"):
                        await self.execute(row)
                        continue
                    await self.settle_step(row)
                except trio.Cancelled:
                    raise
                except Exception as err:  # noqa: BLE001 - retried: every step is idempotent against the chain
                    log.warning("job %s (%s): %s: %s", job_id, row.state, type(err).__name__, err)
                wake = self._wake.setdefault(job_id, trio.Event())
                with trio.move_on_after(JOB_POLL_S):
                    await wake.wait()
                self._wake[job_id] = trio.Event()
        finally:
            self._driving.discard(job_id)
            self._wake.pop(job_id, None)

    async def execute(self, row: JobRow) -> None:
        async with self.slots:
            self.store.update_job(row.job_id, state="running")
            spec = await self.fetch_inputs(row)
            if spec is None:
                return
            out = self.data_dir / "results" / row.job_id
            t0 = time.monotonic()
            manifest = await trio.to_thread.run_sync(self.sandbox.run, spec, out, abandon_on_cancel=True)
            seconds = time.monotonic() - t0
            self.metrics.execution.observe(seconds)
        if manifest.status != "ok" or not manifest.result_hash:
            self._fail(row, f"job ended with status {manifest.status}: {(manifest.error or '').strip()[-300:]}")
            return
        outputs = [self._output_ref(out, name).model_dump() for name in ("outputs.safetensors", "manifest.json")]
        update: dict[str, Any] = {"state": "computed", "result": manifest.result_hash, "result_dir": str(out),
                                  "outputs": outputs, "exec_seconds": round(seconds, 3)}
        if row.replicas >= 2 and not row.salt:
            update["salt"] = "0x" + os.urandom(32).hex()  # stored with the result, before any commitment exists
        self.store.update_job(row.job_id, **update)
        self.metrics.jobs.labels(state="computed").inc()
        log.info("job %s computed: result %s in %.2f s", row.job_id, manifest.result_hash, seconds)

    @staticmethod
    def _output_ref(out: Path, name: str) -> OutputRef:
        data = (out / name).read_bytes()
        return OutputRef(name=name, blob=blob_id_of(data), size=len(data))  # type: ignore[arg-type]

    def _fail(self, row: JobRow, reason: str) -> None:
        self.store.update_job(row.job_id, state="failed", error=reason[:1000])
        self.metrics.jobs.labels(state="failed").inc()
        log.warning("job %s failed: %s", row.job_id, reason)

    # ------------------------------------------------------------------ inputs
    async def fetch_inputs(self, row: JobRow) -> JobSpec | None:
        """The spec (keccak-checked) and every blob (sha256-checked) from the requester; None if it is too late."""
        while True:
            try:
                return await self._fetch_inputs(row)
            except (P2PError, ProtocolError, OSError) as err:
                now = await self.refresh_chain_time()
                if now > row.deadline:
                    self._fail(row, f"inputs not fetched before the deadline: {err}")
                    return None
                log.warning("job %s: fetching inputs failed (%s); retrying", row.job_id, err)
                await trio.sleep(2)

    async def _fetch_inputs(self, row: JobRow) -> JobSpec:
        spec_file = self.data_dir / "specs" / f"{row.spec_hash}.json"
        if spec_file.exists():
            raw = spec_file.read_bytes()
        else:
            raw = await self.fetch_blob(row, f"spec:{row.spec_hash}", MAX_SPEC_BYTES)
            if "0x" + keccak(raw).hex() != row.spec_hash:
                raise ProtocolError("the requester's spec does not hash to the job's spec hash", reason="integrity")
            spec_file.parent.mkdir(parents=True, exist_ok=True)
            spec_file.write_bytes(raw)
        try:
            spec = parse_spec(json.loads(raw), source=f"spec {row.spec_hash[:10]}")
        except (ValueError, AgoraError) as err:
            raise ProtocolError(f"unusable spec: {err}", reason="malformed") from None
        budget = min(self.config.max_input_mb, spec.limits.memory_mb) * 2**20
        for blob in spec.blobs():
            if self.blobs.has(blob):
                budget -= self.blobs.path(blob).stat().st_size
                continue
            data = await self.fetch_blob(row, blob, budget)  # sha256-checked against its id
            budget -= len(data)
            await trio.to_thread.run_sync(self.blobs.put_bytes, data)
        return spec

    async def fetch_blob(self, row: JobRow, blob: str, limit: int) -> bytes:
        """A blob of `row`'s job from its requester (see protocol.fetch_blob: capped, sha256-checked)."""
        return await self.fetch_blob_from(row.requester_addrs, row.requester_peer, row.job_id, blob, limit)

    async def fetch_blob_from(self, addrs: list[str], peer: str, job_id: str, blob: str, limit: int) -> bytes:
        async def request(payload: bytes) -> bytes:
            return await self.request_peer(addrs, peer, BLOB_PROTOCOL, payload, timeout=REQUEST_TIMEOUT_S)

        return await fetch_blob(request, job_id=job_id, blob=blob, limit=limit)

    async def on_blob_request(self, payload: bytes, peer: Any) -> bytes:
        """Serve a job's outputs to that job's requester peer only."""
        try:
            req: BlobRequest = decode(payload, BlobRequest)
        except ProtocolError as err:
            self.metrics.rejected.labels(reason=err.reason).inc()
            return blob_reply_err(str(err))
        part = self.collab.get(req.job_id.lower())
        if part is not None:
            try:
                data = part.serve_blob(str(peer), req.blob)
            except AgoraError as err:
                return blob_reply_err(str(err))
            return blob_reply_ok(len(data), data[req.offset:req.offset + req.length])
        row = self.store.job(req.job_id.lower())
        if row is None or str(peer) != row.requester_peer:
            return blob_reply_err("not a party of this job")
        ref = next((o for o in row.outputs or [] if o["blob"] == req.blob), None)
        if ref is None or row.result_dir is None:
            return blob_reply_err(f"no output {req.blob} for this job")
        path = Path(row.result_dir) / ref["name"]
        try:
            if not self._output_intact(path, req.blob):
                return blob_reply_err("output changed on disk")
            with open(path, "rb") as f:
                f.seek(req.offset)
                chunk = f.read(req.length)
        except OSError as err:
            return blob_reply_err(f"output unavailable: {err.strerror}")
        return blob_reply_ok(int(ref["size"]), chunk)

    def _output_intact(self, path: Path, blob: str) -> bool:
        """Does `path` still hash to `blob`? Hashed once per file version (size, mtime), not once per chunk."""
        st = path.stat()
        key = (str(path), blob, st.st_size, st.st_mtime_ns)
        if key not in self._intact:
            if hashlib.sha256(path.read_bytes()).hexdigest() != blob.split(":", 1)[1]:
                return False
            self._intact.add(key)
        return True

    # ------------------------------------------------------------------ settlement
    async def settle_step(self, row: JobRow) -> None:
        """One pass over a computed job: messages to the requester, then chain fallbacks by chain time."""
        view = await self.read(self.market.job, b32(row.job_id))
        now = await self.refresh_chain_time()
        if view.settled:
            self._settled(row, view)
            return
        margin = self.config.settle_margin_s
        if row.replicas == 1 and view.job.phase != JobPhase.DISPUTED:
            await self._settle_single(row, view, now, margin)
            return
        if not row.salt:  # a disputed k = 1 job turns into commit-reveal, with the worker as participant 0
            row.salt = "0x" + os.urandom(32).hex()
            self.store.update_job(row.job_id, salt=row.salt)
        await self._settle_replicated(row, view, now, margin)

    async def _settle_single(self, row: JobRow, view: Any, now: int, margin: int) -> None:
        job = view.job
        result = b32(row.result)  # type: ignore[arg-type]
        if not row.sent & SENT_RESULT and job.phase == JobPhase.ASSIGNED and now < row.deadline:
            v, r, s = sign_result(self.account, b32(row.job_id), result, chain_id=self.chain_id,
                                  market=self.market_address)
            msg = ResultMsg(job_id=row.job_id, result=row.result, sig=Sig.of(v, r, s),  # type: ignore[arg-type]
                            outputs=[OutputRef(**o) for o in row.outputs or []])
            if await self._tell(row, msg):
                self.store.update_job(row.job_id, sent=row.sent | SENT_RESULT)
        if job.phase == JobPhase.ASSIGNED and now >= row.deadline - margin:
            if now <= row.deadline:
                log.info("job %s not settled by deadline - %d s: submitting the result", row.job_id, margin)
                await self.transact(self.market.submit_result, b32(row.job_id), result)
                self.store.update_job(row.job_id, state="submitted")
                self.metrics.jobs.labels(state="submitted").inc()
            else:
                await self._finalize(row)
        elif job.phase == JobPhase.SUBMITTED and now > job.challenge_end:
            await self._finalize(row)

    async def _settle_replicated(self, row: JobRow, view: Any, now: int, margin: int) -> None:
        job = view.job
        deadline, window = job.deadline, job.window  # a dispute sets a new deadline
        result, salt = b32(row.result), b32(row.salt)  # type: ignore[arg-type]
        jid = b32(row.job_id)
        commitment = commitment_for(jid, self.address, result, salt)
        bit = 1 << row.idx
        everyone = (1 << len(job.participants)) - 1
        committed, revealed = view.committed_mask & bit, view.revealed_mask & bit
        if not row.sent & SENT_COMMIT and not committed and now < deadline:
            index, c, v, r, s = sign_commit(self.account, jid, row.idx, commitment, chain_id=self.chain_id,
                                            market=self.market_address)
            msg = CommitMsg(job_id=row.job_id, index=index, commitment="0x" + c.hex(), sig=Sig.of(v, r, s))
            if await self._tell(row, msg):
                self.store.update_job(row.job_id, sent=row.sent | SENT_COMMIT, state="committed")
                self.metrics.jobs.labels(state="committed").inc()
        if not committed and deadline - margin <= now <= deadline:
            log.info("job %s: commitment not on chain by deadline - %d s: committing", row.job_id, margin)
            await self.transact(self.market.commit, jid, row.idx, commitment)
            self.store.update_job(row.job_id, state="committed")
            return
        all_in = view.committed_mask & everyone == everyone
        if committed and not revealed and (all_in or now > deadline):
            if not row.sent & SENT_REVEAL:
                msg = RevealMsg(job_id=row.job_id, index=row.idx, result=row.result,  # type: ignore[arg-type]
                                salt=row.salt,  # type: ignore[arg-type]
                                outputs=[OutputRef(**o) for o in row.outputs or []])
                if await self._tell(row, msg):
                    self.store.update_job(row.job_id, sent=row.sent | SENT_REVEAL, state="revealed")
                    self.metrics.jobs.labels(state="revealed").inc()
            if now >= deadline + window - margin and now <= deadline + window:
                log.info("job %s: opening not on chain by the window's end - %d s: revealing", row.job_id, margin)
                await self.transact(self.market.reveal, jid, row.idx, result, salt)
                self.store.update_job(row.job_id, state="revealed")
                return
        if now > deadline + window:
            await self._finalize(row)

    async def _tell(self, row: JobRow, msg: Any) -> bool:
        """Send a result / commit / reveal message to the requester; True when it acknowledged."""
        try:
            reply = await self.request_peer(row.requester_addrs, row.requester_peer, RESULT_PROTOCOL, msg.encode())
            ack: Ack = decode(reply, Ack)
        except (P2PError, ProtocolError) as err:
            log.info("job %s: %s not delivered: %s", row.job_id, msg.type, err)
            return False
        if not ack.ok:
            log.info("job %s: requester refused the %s: %s", row.job_id, msg.type, ack.reason)
        return ack.ok

    async def _finalize(self, row: JobRow) -> None:
        log.info("job %s: finalizing", row.job_id)
        await self.transact(self.market.finalize, b32(row.job_id))

    def _settled(self, row: JobRow, view: Any) -> None:
        s = view.settlement
        paid = int(s.get("paidMask", 0)) >> row.idx & 1
        slashed = int(s.get("slashedMask", 0)) >> row.idx & 1
        earnings = row.price if paid else (-row.collateral if slashed else 0)
        outcome = view.outcome.name.lower() if view.outcome is not None else "settled"
        share = ":paid" if paid else ":slashed" if slashed else ""
        self.store.update_job(row.job_id, state="settled", outcome=outcome + share, earnings=earnings)
        self.metrics.jobs.labels(state="settled").inc()
        if earnings > 0:
            self.metrics.earnings.inc(earnings)
        log.info("job %s settled (%s): %s wei", row.job_id, outcome, earnings)
        if self._nursery is not None and self.config.auto_withdraw_wei is not None:
            self._nursery.start_soon(self.maybe_withdraw)

    async def maybe_withdraw(self) -> None:
        threshold = self.config.auto_withdraw_wei
        if threshold is None:
            return
        try:
            balance = await self.read(self.market.market_balance, self.address)
            if balance >= threshold and balance > 0:
                await self.transact(self.market.withdraw, balance)
                log.info("withdrew %s wei of earnings", balance)
        except AgoraError as err:
            log.warning("auto-withdraw failed: %s", err)
