"""The one exception hierarchy of tensoragora.

Every error a user can meet is an `AgoraError`; subclasses also subclass the closest builtin so callers may
catch either. The CLI prints `str(err)` as one line and exits with `err.exit_code`.
"""

from __future__ import annotations

from typing import Any


class AgoraError(Exception):
    """Base of all tensoragora errors."""

    exit_code: int = 1


class ConfigError(AgoraError, ValueError):
    """Bad or missing configuration (paths, URLs, options)."""

    exit_code = 2


class WalletError(AgoraError):
    """Keystore problems: missing keystore, unreadable file."""


class WrongPasswordError(WalletError, ValueError):
    """The keystore password is wrong."""


class ToolchainError(AgoraError, RuntimeError):
    """Node, npm packages or the Solidity compiler are missing or failed."""


class ChainError(AgoraError, RuntimeError):
    """A local chain process could not be started or stopped."""

    exit_code = 3


class RpcUnreachableError(AgoraError, ConnectionError):
    """The JSON-RPC endpoint does not answer."""

    exit_code = 3


class ReceiptTimeoutError(AgoraError, TimeoutError):
    """A transaction was sent but no receipt arrived in time: it may still be mined. `tx_hash` names it."""

    def __init__(self, message: str, *, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class DeploymentError(AgoraError, LookupError):
    """No (or a stale) deployment file for this chain."""


class InsufficientFundsError(AgoraError, ValueError):
    """Not enough balance or allowance; the message carries both amounts.

    When it comes from a revert, `error_name` and `error_args` hold the decoded custom error.
    """

    def __init__(self, message: str, *, error_name: str | None = None, args: dict | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = args or {}


class TransactionRevertedError(AgoraError, RuntimeError):
    """A transaction or call reverted; `error_name` and `args` hold the decoded custom error."""

    def __init__(self, message: str, *, error_name: str | None = None, args: dict | None = None,
                 tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = args or {}
        self.tx_hash = tx_hash


class NonceTooLowError(TransactionRevertedError):
    """The node refused a transaction because its nonce was already used (another process of the same account
    sent one); the client has forgotten its cached nonce, so sending again signs with a fresh one."""


class SpecError(AgoraError, ValueError):
    """A job spec or bid file is invalid."""


class BlobNotFoundError(AgoraError, LookupError):
    """No blob with this id in the store."""


class BlobTooLargeError(AgoraError, ValueError):
    """A blob is over the size cap; `size` and `limit` hold both sizes in bytes (`size` may be a lower bound
    when a stream was cut off)."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class BlobIntegrityError(AgoraError, ValueError):
    """A stored blob's bytes do not hash to its id (corrupted or tampered with)."""


class ResultMismatchError(AgoraError, ValueError):
    """Result outputs do not match their manifest (or another result); `tensor` names the first differing tensor
    when there is one."""

    def __init__(self, message: str, *, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


class NoAcceptableBidsError(AgoraError):
    """Fewer acceptable bids than replicas: nothing was sent to the chain. `explanation` (a
    `marketplace.requester.Explanation`) says why, bid by bid."""

    def __init__(self, explanation: Any) -> None:
        super().__init__(explanation.summary)
        self.explanation = explanation


class JobFailedError(AgoraError):
    """A job could not be opened or did not settle with a result."""
