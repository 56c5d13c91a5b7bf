"""The object a script starts from: `Agora.connect(...)` (synchronous) and `AsyncAgora.connect(...)` (trio).

One `Agora` owns everything the CLI used to wire by hand for one account on one deployment: the chain client and
market binding, the account's requester store, the blob store and the libp2p identity key.

    from marketplace import Agora, load_spec, to_wei

    agora = Agora.connect("http://127.0.0.1:8545", account="alice", password="...")
    outcome = agora.submit(load_spec("examples/specs/mlp-inference.yaml"), k=1, max_price=to_wei(1),
                           bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2..."])
    print(outcome.state, outcome.out_dir)

Many jobs at once, from trio code:

    async with AsyncAgora.connect(rpc, account="alice").requester(bootstrap=addrs) as req:
        outcome = await req.submit(spec, k=3, max_price=to_wei(1))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from eth_account.signers.local import LocalAccount

from marketplace.blobs import BlobStore
from marketplace.client import ChainClient
from marketplace.config import Settings, load_settings
from marketplace.deployment import Deployment
from marketplace.jobs import JobView
from marketplace.market import Market
from marketplace.requester.core import SubmitOutcome
from marketplace.requester.engine import Requester
from marketplace.requester.store import RequesterStore
from marketplace.requester.sync import run_trio
from marketplace.spec import JobSpec
from marketplace.types import b32


def _settings(home: Path | None) -> Settings:
    settings = load_settings()
    if home is None:
        return settings
    return settings.model_copy(update={"home": Path(home).expanduser()})


def _unlock(account: str | LocalAccount | None, password: str | None, password_file: Path | None,
            settings: Settings) -> LocalAccount | None:
    """The signer: a LocalAccount as given, or a keystore (name or address, else AGORA_ACCOUNT, else the only
    one) unlocked; None (read-only) when no account is named anywhere and no password is given."""
    if isinstance(account, LocalAccount):
        return account
    from marketplace import wallet
    from marketplace.errors import WalletError

    target = account or settings.account
    if password is not None:
        if target is not None:
            return wallet.unlock(wallet.find(target, settings.keystore_dir), password)
        stores = wallet.list_keystores(settings.keystore_dir)
        if len(stores) != 1:
            raise WalletError(f"{len(stores)} keystores in {settings.keystore_dir}: name the account to unlock")
        return wallet.unlock(stores[0], password)
    if target is None and password_file is None:
        return None
    return wallet.load_account(account=account, password_file=password_file, settings=settings)


class Agora:
    """A connection to a deployed market, for one account (or none: read-only)."""

    def __init__(self, client: ChainClient, *, settings: Settings | None = None,
                 blob_dir: Path | None = None) -> None:
        self.client = client
        self.settings = settings or load_settings()
        self.market = Market(client)
        self._blob_dir = Path(blob_dir) if blob_dir else None

    @classmethod
    def connect(cls, rpc: str | None = None, *, account: str | LocalAccount | None = None,
                password: str | None = None, password_file: Path | None = None, home: Path | None = None,
                deployments: Path | None = None, blob_dir: Path | None = None) -> Self:
        """Connect to `rpc` (default AGORA_RPC), load the deployment of its chain from `deployments` (default
        AGORA_DEPLOYMENTS) and unlock `account`: a keystore name or address under `home` (default AGORA_HOME),
        or a `LocalAccount`. The password comes from `password`, `password_file`, AGORA_PASSWORD or a prompt.
        With no account given anywhere, the connection is read-only.

        Raises RpcUnreachableError, DeploymentError, WalletError, WrongPasswordError."""
        settings = _settings(home)
        signer = _unlock(account, password, password_file, settings)
        client = ChainClient.open(rpc or settings.rpc_url, deployments or settings.deployments_dir, account=signer)
        return cls(client, settings=settings, blob_dir=blob_dir)

    # ------------------------------------------------------------------ what it owns
    @property
    def address(self) -> str:
        """The account's address; ConfigError on a read-only connection."""
        return self.client.address

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    @property
    def deployment(self) -> Deployment:
        return self.client.deployment

    @cached_property
    def blobs(self) -> BlobStore:
        """The content store of job inputs and outputs (default AGORA_HOME/blobs)."""
        from marketplace.blobs import default_store

        return BlobStore(self._blob_dir) if self._blob_dir else default_store()

    @cached_property
    def store(self) -> RequesterStore:
        """The account's requester database (AGORA_HOME/requester/<address>/requester.db)."""
        return RequesterStore.for_account(self.settings.home, self.address)

    @cached_property
    def p2p_key(self) -> Any:
        """The account's libp2p identity key (created on first use beside the keystores)."""
        from marketplace.p2p import load_or_create_key
        from marketplace.p2p.identity import identity_key_path

        return load_or_create_key(identity_key_path(self.settings.keystore_dir, self.address))

    # ------------------------------------------------------------------ reading
    def job(self, job_id: str | bytes) -> JobView:
        """A job's state on chain (rebuilt from its events and checked against its slot)."""
        return self.market.job(b32(job_id) if isinstance(job_id, str) else job_id)

    def balances(self, owner: str | None = None) -> dict[str, int]:
        """Wallet tokens and market balance of `owner` (default: this account), in wei."""
        who = owner or self.address
        return {"token": self.market.token_balance(who), "market": self.market.market_balance(who)}

    # ------------------------------------------------------------------ buying compute
    @asynccontextmanager
    async def requester(self, *, bootstrap: list[str] | None = None, listen: str = "/ip4/127.0.0.1/tcp/0",
                        progress: Callable[[str], None] | None = None) -> AsyncIterator[Requester]:
        """A running `Requester` (one libp2p host serving every job it opens) for trio code."""
        from marketplace.p2p.discovery import bootstrap_from_env

        addrs = list(bootstrap) if bootstrap is not None else bootstrap_from_env()
        async with Requester.open(self.market, store=self.store, blobs=self.blobs, key=self.p2p_key,
                                  bootstrap=addrs, listen=listen, progress=progress) as req:
            yield req

    def submit(self, spec: JobSpec, *, k: int = 1, max_price: int, bootstrap: list[str] | None = None,
               listen: str = "/ip4/127.0.0.1/tcp/0", progress: Callable[[str], None] | None = None,
               **options: Any) -> SubmitOutcome:
        """Announce `spec`, choose `k` bids at most `max_price` wei each, open the job and (by default) wait until
        it settles with verified outputs. `options` are those of `Requester.submit` (`wait`, `out_dir`,
        `approve`, `bid_window`, ...). Raises NoAcceptableBidsError (nothing was sent to the chain),
        InsufficientFundsError, BlobNotFoundError, JobFailedError."""
        async def main() -> SubmitOutcome:
            async with self.requester(bootstrap=bootstrap, listen=listen, progress=progress) as req:
                return await req.submit(spec, k=k, max_price=max_price, **options)

        return run_trio(main)

    def resume(self, job: str | None = None, *, bootstrap: list[str] | None = None,
               listen: str = "/ip4/127.0.0.1/tcp/0", withdraw: bool = False, timeout: float | None = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Serve, watch and settle this account's unfinished jobs (or `job`); optionally withdraw refunds."""
        async def main() -> dict[str, Any]:
            async with self.requester(bootstrap=bootstrap, listen=listen, progress=progress) as req:
                return await req.resume_all(job, timeout=timeout, withdraw=withdraw)

        return run_trio(main)


class AsyncAgora(Agora):
    """`Agora` for trio code: the same connection (`AsyncAgora.connect(...)`; connecting is one quick RPC, done
    before the event loop needs it), with awaitable chain reads (web3 runs in worker threads)."""

    async def job_async(self, job_id: str | bytes) -> JobView:
        import trio

        return await trio.to_thread.run_sync(self.job, job_id)

    async def submit_async(self, spec: JobSpec, *, k: int = 1, max_price: int, bootstrap: list[str] | None = None,
                           **options: Any) -> SubmitOutcome:
        """`Agora.submit` from trio code (one host for this job; use `requester()` for many)."""
        async with self.requester(bootstrap=bootstrap) as req:
            return await req.submit(spec, k=k, max_price=max_price, **options)
