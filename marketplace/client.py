"""Chain bindings: one connection to a deployed market, sending transactions and translating errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import BlockIdentifier

from marketplace import eip712
from marketplace.compiled import load_artifact
from marketplace.deployment import Deployment
from marketplace.errors import (
    ConfigError,
    DeploymentError,
    NonceTooLowError,
    ReceiptTimeoutError,
    RpcUnreachableError,
    TransactionRevertedError,
)
from marketplace.revert import to_agora_error

ProgressFn = Callable[[str], None]


def _revert_types() -> tuple[type[BaseException], ...]:
    """What a revert raises, per backend: anvil/ganache/hardhat via web3, eth-tester (py-evm) in-process."""
    types: list[type[BaseException]] = [ContractLogicError, Web3RPCError, ValueError]
    try:
        from eth_tester.exceptions import TransactionFailed
    except ImportError:  # eth-tester is a test-only dependency
        pass
    else:
        types.append(TransactionFailed)
    return tuple(types)


_REVERTS = _revert_types()


def connect(rpc_url: str, *, timeout: float = 10.0) -> Web3:
    """A Web3 over HTTP that answers `eth_chainId`.

    Raises RpcUnreachableError when nothing answers at `rpc_url`, ConfigError for a non-HTTP URL.
    """
    if not rpc_url.startswith(("http://", "https://")):
        raise ConfigError(f"RPC URL must start with http:// or https://, got {rpc_url!r}")
    # web3's own retry of transient failures (connection errors, timeouts, HTTP errors) with exponential backoff,
    # for reads only (its allow-list has no eth_sendRawTransaction: a send is never repeated blindly).
    retry = ExceptionRetryConfiguration(errors=(ConnectionError, requests.HTTPError, requests.Timeout), retries=3,
                                        backoff_factor=0.2)
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=retry))
    try:
        w3.eth.chain_id  # noqa: B018 - probe
    except (requests.exceptions.RequestException, OSError) as err:
        raise RpcUnreachableError(f"cannot reach RPC at {rpc_url}: {type(err).__name__}") from None
    except Web3Exception as err:
        raise RpcUnreachableError(f"RPC at {rpc_url} did not answer eth_chainId: {err}") from None
    return w3


def _is_nonce_too_low(err: BaseException) -> bool:
    """Whether a node refused a transaction for a used nonce. JSON-RPC has no code for it (-32000 is generic),
    so this is the one place that reads the node's message: geth, anvil, hardhat and ganache all say it so."""
    message = getattr(err, "message", None) or (err.args[0] if err.args else "")
    if isinstance(message, dict):
        message = message.get("message", "")
    return "nonce too low" in str(message).lower()


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int
    block: int
    receipt: Any


class ChainClient:
    """Contracts of one deployment, plus an optional signing account.

    Every transaction is simulated first (`eth_estimateGas`): a call that would revert raises the decoded
    project error before anything is signed or sent, so a failed command never spends gas or moves funds.
    """

    def __init__(self, w3: Web3, deployment: Deployment, *, account: LocalAccount | None = None,
                 receipt_timeout: float = 120.0) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.receipt_timeout = receipt_timeout
        self.chain_id = deployment.chain_id
        self.token = self._contract("AgoraToken", deployment.token)
        self.registry = self._contract("ProviderRegistry", deployment.registry)
        self.market = self._contract("JobMarket", deployment.market)
        eip712.watch_market(w3, deployment.market)  # signers read the market's EIP-712 domain on first use
        self._nonce: int | None = None

    @classmethod
    def open(cls, rpc_url: str, deployments_dir: Path, *, account: LocalAccount | None = None,
             check_code: bool = True) -> ChainClient:
        """Connect to `rpc_url`, read `deployments_dir/<chainId>.json` and check the market has code.

        Raises RpcUnreachableError, DeploymentError.
        """
        w3 = connect(rpc_url)
        deployment = Deployment.load(deployments_dir, w3.eth.chain_id)
        if check_code and not w3.eth.get_code(Web3.to_checksum_address(deployment.market)):
            raise DeploymentError(
                f"deployment file for chain {deployment.chain_id} is stale: no contract at {deployment.market} "
                f"(a restarted dev chain?); run `agora deploy --rpc {rpc_url}` again")
        return cls(w3, deployment, account=account)

    def _contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"])

    @property
    def address(self) -> str:
        if self.account is None:
            raise ConfigError("this command needs an account: pass --account NAME (see `agora wallet list`)")
        return self.account.address

    def call(self, fn: ContractFunction, *, action: str = "call", block: BlockIdentifier = "latest") -> Any:
        """Run a view function (at `block`); reverts become project errors."""
        try:
            return fn.call({"from": self.account.address} if self.account else {}, block_identifier=block)
        except _REVERTS as err:
            raise to_agora_error(err, action=action) from None
        except requests.exceptions.RequestException as err:
            raise RpcUnreachableError(f"RPC stopped answering during {action}: {type(err).__name__}") from None

    def transact(self, fn: Any, *, action: str, gas: int | None = None) -> TxResult:
        """Simulate, sign, send and wait for `fn`; return its receipt.

        Raises TransactionRevertedError / InsufficientFundsError (decoded custom errors), RpcUnreachableError.
        """
        sender = self.address
        try:
            if gas is None:
                gas = int(fn.estimate_gas({"from": sender}) * 1.25) + 20_000
            params: Any = {"from": sender, "nonce": self.next_nonce(), "gas": gas, "chainId": self.chain_id}
            tx: Any = fn.build_transaction(params)
            signed = self.account.sign_transaction(tx)  # type: ignore[union-attr]
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except _REVERTS as err:
            self._nonce = None
            if _is_nonce_too_low(err):
                raise NonceTooLowError(f"{action}: nonce already used (another sender of {sender}?)") from None
            raise to_agora_error(err, action=action) from None
        except requests.exceptions.RequestException as err:
            self._nonce = None
            raise RpcUnreachableError(f"RPC stopped answering during {action}: {type(err).__name__}") from None
        self._nonce = (self._nonce or 0) + 1
        return self.wait(tx_hash.to_0x_hex(), action=action, fn=fn)

    def wait(self, tx_hash: str, *, action: str, fn: ContractFunction | None = None) -> TxResult:
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=self.receipt_timeout,
                                                               poll_latency=0.05)
        except TimeExhausted:
            raise ReceiptTimeoutError(f"{action}: no receipt for {tx_hash} after {self.receipt_timeout:.0f} s",
                                      tx_hash=tx_hash) from None
        if receipt["status"] != 1:
            # Mined but reverted (state changed between simulation and inclusion): replay for the reason.
            self._nonce = None
            if fn is not None:
                try:
                    fn.call({"from": self.address}, block_identifier=receipt["blockNumber"] - 1)
                except _REVERTS as err:
                    raise to_agora_error(err, action=action, tx_hash=tx_hash) from None
            raise TransactionRevertedError(f"{action} reverted in transaction {tx_hash}", tx_hash=tx_hash)
        return TxResult(tx_hash=tx_hash, gas_used=int(receipt["gasUsed"]), block=int(receipt["blockNumber"]),
                        receipt=receipt)

    def next_nonce(self) -> int:
        """The nonce the next transaction of this account will be signed with (cached; re-read after a failure)."""
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(Web3.to_checksum_address(self.address), "pending")
        return self._nonce

    def with_account(self, account: LocalAccount | None) -> ChainClient:
        """The same deployment seen by another signer."""
        return ChainClient(self.w3, self.deployment, account=account, receipt_timeout=self.receipt_timeout)

    def timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def next_block_time(self) -> int:
        """The timestamp the next block will have, as well as the node can tell: an idle dev chain's latest
        block can be minutes old, and a transaction is checked against the block that includes it."""
        latest = self.timestamp()
        try:
            return max(latest, int(self.w3.eth.get_block("pending")["timestamp"]))
        except Exception:  # noqa: BLE001 - some nodes do not serve a pending block
            return latest

    def wait_until(self, timestamp: int, *, poll: float = 0.5) -> None:
        """Block until the chain's latest block is past `timestamp` (real time on a live chain)."""
        while self.timestamp() <= timestamp:
            time.sleep(poll)
