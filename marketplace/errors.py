"""The one exception hierarchy of tensoragora.

Every error a user can meet is an `AgoraError`; subclasses also subclass the closest builtin so callers may
catch either. The CLI prints `str(err)` as one line and exits with `err.exit_code`.
"""

from __future__ import annotations


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


class RpcUnreachableError(AgoraError, ConnectionError):
    """The JSON-RPC endpoint does not answer."""


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


class SpecError(AgoraError, ValueError):
    """A job spec or bid file is invalid."""
