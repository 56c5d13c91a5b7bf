"""The one exception hierarchy of tensoragora: every exception `marketplace` raises is defined here.

Every error a user can meet is an `AgoraError`; subclasses also subclass the closest builtin so callers may
catch either. The CLI prints `str(err)` as one line and exits with `err.exit_code`. Control flow goes by type
and attributes (`ProtocolError.reason`, `FrameTooLargeError.size`, ...), never by the text of a message.

    AgoraError
    ├── ConfigError (ValueError)
    ├── WalletError
    │   └── WrongPasswordError (ValueError)
    ├── ToolchainError (RuntimeError)
    ├── ChainError (RuntimeError)
    ├── RpcUnreachableError (ConnectionError)
    ├── DeploymentError (LookupError)
    ├── InsufficientFundsError (ValueError)
    ├── TransactionRevertedError (RuntimeError)
    ├── SpecError (ValueError)
    ├── BlobNotFoundError (LookupError)
    ├── BlobTooLargeError (ValueError)
    ├── BlobIntegrityError (ValueError)
    ├── ResultMismatchError (ValueError)
    ├── StoreVersionError (RuntimeError)          a database written by a newer tensoragora
    ├── JobNotFoundError (LookupError)
    ├── ProtocolError (ValueError)                a wire message refused; `reason` says why (a RejectCode)
    ├── PeerIdentityError (ValueError)
    ├── PeerRecordError (ValueError)
    ├── P2PError (ConnectionError)
    │   ├── FrameError
    │   │   ├── FrameTooLargeError
    │   │   └── FrameTimeoutError (TimeoutError)
    │   ├── PeerUnreachableError
    │   ├── PeerTimeoutError (TimeoutError)
    │   └── PingMismatchError
    ├── PipelineError (ValueError)
    │   ├── PipelineInvalidError
    │   └── PipelineChangedError
    ├── StageFailedError
    │   └── StageHeldError
    ├── CollabError
    ├── NoAcceptableBidsError
    └── JobFailedError
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


class StoreVersionError(AgoraError, RuntimeError):
    """A SQLite store's schema version is newer than this code knows (written by a newer tensoragora)."""


class JobNotFoundError(AgoraError, LookupError):
    """No job with this id on this market."""


# ---------------------------------------------------------------------------------------------------- wire
class ProtocolError(AgoraError, ValueError):
    """A message that is malformed, oversized, unsigned, wrongly signed, replayed, stale or rate-limited.

    `reason` is a short label for metrics, logs and replies (malformed, oversized, signature, stale, ...): one of
    the values of `marketplace.protocol.RejectCode`, which an `Ack` carries as its `code`."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class PeerIdentityError(AgoraError, ValueError):
    """The libp2p identity key file is unreadable or malformed."""


class PeerRecordError(AgoraError, ValueError):
    """A peer record is malformed or does not bind this peer id to the claimed address."""


class P2PError(AgoraError, ConnectionError):
    """Base of the provider's libp2p errors: unreachable peer, failed stream, bad frame."""


class FrameError(P2PError):
    """A frame could not be read or written (oversized, truncated, timed out, stream error)."""


class FrameTooLargeError(FrameError):
    """A frame over the size cap; `size` and `limit` in bytes."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class FrameTimeoutError(FrameError, TimeoutError):
    """No complete frame within the read timeout."""


class PeerUnreachableError(P2PError):
    """Could not connect to the peer or open a stream to it."""


class PeerTimeoutError(P2PError, TimeoutError):
    """The peer did not answer within the timeout (down, hung or overloaded)."""


class PingMismatchError(P2PError):
    """The peer answered a ping with other bytes than it was sent."""


# ---------------------------------------------------------------------------------------------------- pipelines
class PipelineError(AgoraError, ValueError):
    """A pipeline file that cannot be read or parsed (one problem)."""

    exit_code = 2


class PipelineInvalidError(PipelineError):
    """`validate` found problems; `problems` lists them, one line each. Nothing was sent anywhere."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems))
        self.problems = problems


class PipelineChangedError(PipelineError):
    """The pipeline file changed a stage that was already paid for (or is in flight): resuming would mix runs."""


class StageFailedError(AgoraError):
    """A stage's job did not settle with verified outputs."""


class StageHeldError(StageFailedError):
    """A stage whose earlier job may still open (or whose record cannot be checked) is not bought again."""


# ---------------------------------------------------------------------------------------------------- collab
class CollabError(AgoraError):
    """A collaborative job could not start or finish."""


class NoAcceptableBidsError(AgoraError):
    """Fewer acceptable bids than replicas: nothing was sent to the chain. `explanation` (a
    `marketplace.requester.Explanation`) says why, bid by bid."""

    def __init__(self, explanation: Any) -> None:
        super().__init__(explanation.summary)
        self.explanation = explanation


class JobFailedError(AgoraError):
    """A job could not be opened or did not settle with a result."""
