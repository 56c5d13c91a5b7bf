"""The requester from synchronous code: one host for one call (use the async `Requester` for many jobs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from marketplace.blobs import BlobStore
from marketplace.market import Market
from marketplace.requester.core import SubmitOutcome
from marketplace.requester.engine import Requester
from marketplace.requester.store import RequesterStore
from marketplace.spec import JobSpec

T = TypeVar("T")


def submit_sync(market: Market, spec: JobSpec, *, store: RequesterStore, blobs: BlobStore, key: Any,
                bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                progress: Callable[[str], None] | None = None, **kwargs: Any) -> SubmitOutcome:
    """`Requester.submit` from synchronous code: one host for this one job."""

    async def main() -> SubmitOutcome:
        async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap),
                                  listen=listen, progress=progress) as req:
            return await req.submit(spec, **kwargs)

    return run_trio(main)


def resume_sync(market: Market, *, store: RequesterStore, blobs: BlobStore, key: Any, job: str | None = None,
                bootstrap: list[str] = (), listen: str = "/ip4/127.0.0.1/tcp/0",  # type: ignore[assignment]
                withdraw: bool = False, timeout: float | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Serve, watch and settle every unfinished stored job (or `job`), then optionally withdraw refunds."""

    async def main() -> dict[str, Any]:
        async with Requester.open(market, store=store, blobs=blobs, key=key, bootstrap=list(bootstrap),
                                  listen=listen, progress=progress) as req:
            return await req.resume_all(job, timeout=timeout, withdraw=withdraw)

    return run_trio(main)


def run_trio(main: Callable[[], Any]) -> Any:
    """trio.run, with a nursery's exception group of one real error turned back into that error (so the CLI
    prints one line for an AgoraError rather than a traceback)."""
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        real = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        raise


def _leaves(err: BaseException) -> Any:
    if isinstance(err, BaseExceptionGroup):
        for sub in err.exceptions:
            yield from _leaves(sub)
    else:
        yield err
