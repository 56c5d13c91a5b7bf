"""The provider agent: one trio program that bids on announced jobs, runs what it wins and gets paid.

`Agent` builds the shared `NodeContext` (config, account, store, blobs, metrics, chain layer) and one object
per protocol phase over it, then `run` starts the node (device, sandbox, host, registration) and the loops:

    bidding.Bidder         adverts, announcement validation, funds checks, strategy, signed bids
    jobs.JobRunner         claims (Assigned message or chain logs), the chain loop, driving each job to
                           settlement (execute in the sandbox, k = 1 result, k >= 2 commit-reveal, finalize),
                           auto-withdraw
    collab.CollabJobs      collaborative training participants and their receipts' claims
    serving.RequestHandlers  the assign / collab / blob request protocols

Every step reads its state from the store and the chain, so a SIGKILLed node restarted on the same data dir
picks each unsettled job up where it was (see docs/node.md). Chain access goes through `marketplace.chainio`
(reads in worker threads with a concurrency limit, transactions of the one account under one lock).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from libp2p.peer.id import ID

from marketplace.client import ChainClient
from marketplace.p2p import P2PError, PeerRecord, load_or_create_key, open_host
from marketplace.protocol import canonical
from node.errors import AgentError

from .bidding import Bidder
from .collab import CollabJobs
from .config import NodeConfig
from .context import NodeContext
from .device import measure_device
from .jobs import JobRunner
from .ops import OpsServer
from .serving import RequestHandlers
from .strategy import Strategy, TableStrategy

if TYPE_CHECKING:
    from node.sandbox import Sandbox

log = logging.getLogger("agora.node")


class Agent:
    """One provider node. Build it with everything unlocked and connected, then `await agent.run(ready)`."""

    def __init__(self, config: NodeConfig, account: LocalAccount, client: ChainClient, *, data_dir: Path,
                 key_path: Path, strategy: Strategy | None = None) -> None:
        self.ctx = NodeContext.create(config, account, client, data_dir)
        self.config = config
        self.key_path = key_path
        self.started = time.monotonic()
        self.bidding = Bidder(self.ctx, strategy or TableStrategy(config))
        self.jobs = JobRunner(self.ctx)
        self.collab = CollabJobs(self.ctx)
        self.handlers = RequestHandlers(self.ctx, jobs=self.jobs, collab=self.collab)
        self.ops: OpsServer | None = None

    @property
    def address(self) -> str:
        return self.ctx.address

    # ------------------------------------------------------------------ start-up
    def _warm_sandbox(self) -> Sandbox:
        from node.sandbox import Sandbox

        sandbox = Sandbox(self.ctx.blobs, workers_dir=self.ctx.data_dir / "sandbox")
        sandbox.warm()
        return sandbox

    async def ensure_registered(self, peer_id: ID) -> None:
        """Register with `config.stake` (approving the registry first) when this account is not a provider."""
        ctx = self.ctx
        info = await ctx.io.read(ctx.market.provider_info, ctx.address)
        if info["registered"]:
            return
        stake = self.config.stake_wei
        have = await ctx.io.read(ctx.market.token_balance, ctx.address)
        if have < stake:
            raise AgentError(f"{ctx.address} is not a registered provider and holds {have} wei of tokens, "
                             f"less than the configured stake {self.config.stake} tokens")
        meta = keccak(canonical({"kinds": self.config.kinds, "prices": dict(self.config.prices)}))
        log.info("registering as a provider with stake %s tokens", self.config.stake)
        await ctx.io.send(ctx.market.ensure_allowance, ctx.client.deployment.registry, stake)
        await ctx.io.send(ctx.market.register, stake, peer_id.to_bytes(), meta)

    async def run(self, ready: Callable[[dict[str, Any]], None]) -> None:
        """Run until SIGINT / SIGTERM; `ready(info)` is called once the node bids (the "ready" line)."""
        ctx = self.ctx
        key = load_or_create_key(self.key_path)
        try:
            ctx.device = await trio.to_thread.run_sync(measure_device, self.config)
            ctx.sandbox = await trio.to_thread.run_sync(self._warm_sandbox)
            await ctx.refresh_chain_time()
            async with open_host(key=key, gossip=True, listen=self.config.listen) as host:
                ctx.host = host
                ctx.record = PeerRecord.sign(ctx.account.key, host.peer_id, ctx.chain_id)
                await self.ensure_registered(host.peer_id)
                self.handlers.serve(host)
                async with trio.open_nursery() as nursery:
                    ctx.nursery = nursery
                    await self._start_discovery(nursery)
                    topics = await self.bidding.subscribe(nursery)
                    nursery.start_soon(self.bidding.advert_loop)
                    nursery.start_soon(self.jobs.chain_loop)
                    nursery.start_soon(self.peers_loop)
                    for row in ctx.store.unsettled_jobs():
                        log.info("resuming job %s (state %s)", row.job_id, row.state)
                        self.jobs.spawn(row.job_id)
                    self.collab.resume_claims()
                    if self.config.auto_withdraw_wei is not None:
                        nursery.start_soon(self.jobs.maybe_withdraw)  # earnings settled while the node was down
                    self._start_ops()
                    ready({"event": "ready", "address": ctx.address, "peer_id": str(host.peer_id),
                           "addrs": host.addrs, "ops": self.ops.url if self.ops else None, "topics": topics,
                           "device": ctx.device.to_json()})
                    await self._wait_for_signal()
                    ctx.stopping = True
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
        finally:
            await self._close()

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            if self.ops is not None:
                self.ops.stop()
            sandbox = self.ctx.sandbox
            if sandbox is not None:
                # A job still running holds the sandbox's lock; its worker dies with us (EOF on its pipe).
                with trio.move_on_after(5):
                    # abandon_on_cancel: trio has it; the stale trio-stubs of trio-typing (a libp2p dependency) lack it.
                    await trio.to_thread.run_sync(sandbox.close, abandon_on_cancel=True)  # type: ignore[call-arg]
            self.ctx.store.close()

    async def _wait_for_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                log.info("received %s", signal.Signals(sig).name)
                return

    async def _start_discovery(self, nursery: trio.Nursery) -> None:
        """Rendezvous discovery when marketplace.p2p.discovery exists; else dial the bootstrap peers directly."""
        try:
            from marketplace.p2p.discovery import maintain_peers  # type: ignore[import-not-found]
        except ImportError:
            maintain_peers = None  # type: ignore[assignment]  # optional module: None when absent
        if maintain_peers is not None:
            await nursery.start(maintain_peers, self.ctx.net, list(self.config.bootstrap))
            return
        # TODO(discovery): drop this fallback once marketplace.p2p.discovery ships maintain_peers.
        for addr in self.config.bootstrap:
            try:
                await self.ctx.net.connect(addr, timeout=5)
                log.info("connected to bootstrap %s", addr)
            except P2PError as err:
                log.warning("bootstrap %s unreachable: %s", addr, err)

    # ------------------------------------------------------------------ ops
    def _start_ops(self) -> None:
        if self.config.ops_port < 0:
            return
        self.ops = OpsServer(self.config.ops_port, metrics=self.ctx.metrics, health=self.health,
                             jobs=lambda: [j.to_json() for j in self.ctx.store.jobs()] + self.collab.to_json())
        self.ops.start()

    def health(self) -> dict[str, Any]:
        ctx = self.ctx
        host = ctx.host
        return {"ok": not ctx.stopping, "address": ctx.address,
                "peer_id": str(host.peer_id) if host is not None else None,
                "peers": len(host.connected_peers()) if host is not None else 0,
                "block": ctx.block, "chain_time": ctx.chain_now,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "jobs": ctx.store.state_counts()}

    async def peers_loop(self) -> None:
        while True:
            self.ctx.metrics.peers.set(len(self.ctx.net.connected_peers()))
            await trio.sleep(2)
