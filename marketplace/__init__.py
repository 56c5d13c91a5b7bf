"""tensoragora: a marketplace for AI compute settled by smart contracts on any EVM chain.

This package is the requester's side and the shared library (chain bindings, deployments, job specs, wire
messages, wallet, the `agora` CLI); it never imports torch. The provider node lives in `node/` and imports this
one. A script starts from one object:

    from marketplace import Agora, load_spec, to_wei

    agora = Agora.connect("http://127.0.0.1:8545", account="alice")
    outcome = agora.submit(load_spec("job.yaml"), k=1, max_price=to_wei(1))

The names below are the public API; everything else may change between versions. Errors are in
`marketplace.errors` (every one is an `AgoraError`).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names and the module each comes from. They load on first use (PEP 562), so `agora --help` and
# every library module that imports a sibling stay as fast as before.
_EXPORTS = {
    "Agora": "marketplace.agora", "AsyncAgora": "marketplace.agora",
    "BlobStore": "marketplace.blobs", "ChainIO": "marketplace.chainio",
    "ChainClient": "marketplace.client", "TxResult": "marketplace.client",
    "Deployment": "marketplace.deployment", "JobView": "marketplace.jobs", "Market": "marketplace.market",
    "AgoraError": "marketplace.errors", "BlobNotFoundError": "marketplace.errors",
    "ConfigError": "marketplace.errors", "InsufficientFundsError": "marketplace.errors",
    "JobFailedError": "marketplace.errors", "NoAcceptableBidsError": "marketplace.errors",
    "RpcUnreachableError": "marketplace.errors", "TransactionRevertedError": "marketplace.errors",
    "Explanation": "marketplace.requester", "JobSession": "marketplace.requester",
    "Requester": "marketplace.requester", "RequesterStore": "marketplace.requester",
    "SubmitOutcome": "marketplace.requester",
    "JobSpec": "marketplace.spec", "load_spec": "marketplace.spec", "parse_spec": "marketplace.spec",
    "from_wei": "marketplace.types", "to_wei": "marketplace.types",
}

__all__ = [
    "Agora", "AgoraError", "AsyncAgora", "BlobNotFoundError", "BlobStore", "ChainClient", "ChainIO",
    "ConfigError", "Deployment", "Explanation", "InsufficientFundsError", "JobFailedError", "JobSession",
    "JobSpec", "JobView", "Market", "NoAcceptableBidsError", "Requester", "RequesterStore",
    "RpcUnreachableError", "SubmitOutcome", "TransactionRevertedError", "TxResult", "__version__", "from_wei",
    "load_spec", "parse_spec", "to_wei",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'marketplace' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from marketplace.agora import Agora, AsyncAgora
    from marketplace.blobs import BlobStore
    from marketplace.chainio import ChainIO
    from marketplace.client import ChainClient, TxResult
    from marketplace.deployment import Deployment
    from marketplace.errors import (
        AgoraError,
        BlobNotFoundError,
        ConfigError,
        InsufficientFundsError,
        JobFailedError,
        NoAcceptableBidsError,
        RpcUnreachableError,
        TransactionRevertedError,
    )
    from marketplace.jobs import JobView
    from marketplace.market import Market
    from marketplace.requester import Explanation, JobSession, Requester, RequesterStore, SubmitOutcome
    from marketplace.spec import JobSpec, load_spec, parse_spec
    from marketplace.types import from_wei, to_wei
