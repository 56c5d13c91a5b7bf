"""Shared pytest fixtures: local chains (started on demand, always stopped), web3, EVM snapshots.

- `anvil`: one anvil per test session, started the first time a test asks for it.
- `w3`: a web3 8 `Web3(HTTPProvider(...))` on that anvil.
- `evm_snapshot`: `evm_snapshot` before the test, `evm_revert` after, so tests sharing anvil stay isolated.
- `ganache_chain`, `hardhat_chain`: one per test module, started on demand.
Every chain process LocalChain started is stopped at the end of the session, whatever happened.

A test that uses a chain fixture (directly or through another fixture) is marked `integration` at collection,
so the fast lane, `pytest -m "not integration"`, never starts a chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from marketplace.devchain import LocalChain, live_chains, rpc_call, stop_all

if TYPE_CHECKING:
    from web3 import Web3


#: Fixtures that start a chain: a test needing one (directly or through another fixture) is an integration test.
CHAIN_FIXTURES = frozenset({"anvil", "w3", "evm_snapshot", "ganache_chain", "hardhat_chain"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CHAIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _run_chain(kind: str) -> Iterator[LocalChain]:
    chain = LocalChain(kind)
    try:
        chain.start()
        yield chain
    finally:
        chain.stop()


@pytest.fixture(scope="session", autouse=True)
def _reap_local_chains() -> Iterator[None]:
    """At the end of the session, stop (SIGTERM, then SIGKILL) every chain process group still running."""
    yield
    leftovers = live_chains()
    stop_all()
    if leftovers:
        import warnings

        warnings.warn(f"stopped {len(leftovers)} chain(s) left running by tests: {leftovers}", stacklevel=1)


@pytest.fixture(scope="session")
def anvil() -> Iterator[LocalChain]:
    """An anvil chain (chain id 31337, the ten dev accounts funded) shared by the whole session."""
    yield from _run_chain("anvil")


@pytest.fixture(scope="module")
def ganache_chain() -> Iterator[LocalChain]:
    """A ganache chain (chain id 1337, same dev accounts) for one test module."""
    yield from _run_chain("ganache")


@pytest.fixture(scope="module")
def hardhat_chain() -> Iterator[LocalChain]:
    """A hardhat node (chain id 31337, same dev accounts) for one test module."""
    yield from _run_chain("hardhat")


@pytest.fixture(scope="session")
def w3(anvil: LocalChain) -> Web3:
    """web3 connected to the session's anvil over HTTP."""
    from web3 import HTTPProvider, Web3

    return Web3(HTTPProvider(anvil.rpc_url, request_kwargs={"timeout": 30}))


@pytest.fixture
def evm_snapshot(anvil: LocalChain) -> Iterator[str]:
    """Snapshot the shared anvil before the test and revert to it afterwards; yields the snapshot id."""
    snap = rpc_call(anvil.rpc_url, "evm_snapshot")
    try:
        yield snap
    finally:
        if anvil.running:
            assert rpc_call(anvil.rpc_url, "evm_revert", [snap]) is True, f"evm_revert({snap}) failed"
