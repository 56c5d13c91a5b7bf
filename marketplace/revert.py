"""Decode reverts into the project's own errors, in one place, whatever the chain.

Anvil and Ganache report a custom error as `ContractCustomError` with `.data`; Hardhat 2 as a
`ContractLogicError` whose data may be a dict; eth-tester as `TransactionFailed`. All of them end up here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from marketplace.errors import AgoraError, InsufficientFundsError, TransactionRevertedError
from marketplace.types import from_wei

_CONTRACTS = ("AgoraToken", "ProviderRegistry", "JobMarket", "CollabMarket")
PANIC_CODES = {
    0x01: "assertion failed", 0x11: "arithmetic overflow or underflow", 0x12: "division by zero",
    0x21: "invalid enum value", 0x31: "pop on empty array", 0x32: "array index out of bounds",
    0x41: "out of memory", 0x51: "call to an uninitialized function",
}


@dataclass(frozen=True)
class DecodedError:
    name: str
    args: dict[str, Any]

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in self.args.items())
        return f"{self.name}({inner})"


def _fmt(v: Any) -> str:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def _canonical_type(inp: dict[str, Any]) -> str:
    t = inp["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_canonical_type(c) for c in inp["components"]) + ")" + t[len("tuple"):]
    return t


@functools.cache
def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    from marketplace.compiled import load_artifact

    table: dict[bytes, tuple[str, list[str], list[str]]] = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"], ["reason"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"], ["code"]),
    }
    for name in _CONTRACTS:
        for item in load_artifact(name)["abi"]:
            if item.get("type") != "error":
                continue
            types = [_canonical_type(i) for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            table[function_signature_to_4byte_selector(sig)] = (
                item["name"], types, [i["name"] or f"arg{n}" for n, i in enumerate(item["inputs"])])
    return table


def decode_revert(data: bytes | str | None) -> DecodedError | None:
    """Decode revert data (custom error, Error(string) or Panic) using every project ABI; None if unknown."""
    if data is None:
        return None
    if isinstance(data, str):
        text = data.split(" ")[-1] if data.startswith("Reverted ") else data
        if not text.startswith("0x"):
            return None
        try:
            data = bytes.fromhex(text[2:])
        except ValueError:
            return None
    if len(data) < 4:
        return None
    entry = _error_table().get(bytes(data[:4]))
    if entry is None:
        return None
    name, types, names = entry
    try:
        values = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed payload: report the name alone
        return DecodedError(name, {})
    args = {n.rstrip("_"): (to_checksum_address(v) if t == "address" else v) for n, t, v in zip(names, types, values)}
    if name == "Panic":
        args["meaning"] = PANIC_CODES.get(int(args["code"]), "unknown panic")
    return DecodedError(name, args)


def revert_data_of(exc: BaseException) -> Any:
    """Pull the revert payload out of whatever exception a web3 backend raised.

    eth-tester's TransactionFailed carries only text; the raw bytes sit in the py-evm Revert it wraps.
    """
    if type(exc).__name__ == "TransactionFailed":
        seen: BaseException | None = exc
        for _ in range(4):  # TransactionFailed <- TransactionFailed(Revert(b"...")) <- Revert(b"...")
            if seen is None:
                break
            for arg in seen.args:
                if isinstance(arg, bytes):
                    return arg
                if isinstance(arg, BaseException) and arg.args and isinstance(arg.args[0], bytes):
                    return arg.args[0]
            seen = seen.__context__ or seen.__cause__
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data") or data.get("result") or data.get("message")
    if data is None and exc.args:
        for arg in exc.args:
            if isinstance(arg, (str, bytes)) and (isinstance(arg, bytes) or arg.startswith("0x")):
                return arg
    return data


def to_agora_error(exc: BaseException, *, action: str, tx_hash: str | None = None) -> AgoraError:
    """Translate a revert into `InsufficientFundsError` (with amounts) or `TransactionRevertedError`."""
    decoded = decode_revert(revert_data_of(exc))
    if decoded is None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return TransactionRevertedError(f"{action} reverted: {message}", tx_hash=tx_hash)
    a = decoded.args
    if decoded.name.endswith("InsufficientAllowance"):
        return InsufficientFundsError(
            f"{action}: insufficient allowance: {a['owner']} allows {from_wei(a['allowance'])} AGORA, "
            f"needs {from_wei(a['needed'])} AGORA (approve more with `agora token approve`)",
            error_name=decoded.name, args=a)
    if decoded.name.endswith("InsufficientBalance") and "needed" in a:  # ours (owner) and OZ's ERC20 (sender)
        holder = a.get("owner", a.get("sender"))
        return InsufficientFundsError(
            f"{action}: insufficient token balance: {holder} has {from_wei(a['balance'])} AGORA, "
            f"needs {from_wei(a['needed'])} AGORA", error_name=decoded.name, args=a)
    if decoded.name == "RegistryInsufficientFreeStake":
        return InsufficientFundsError(
            f"{action}: insufficient free stake: {a['provider']} has {from_wei(a['free'])} AGORA free, "
            f"needs {from_wei(a['needed'])} AGORA", error_name=decoded.name, args=a)
    if decoded.name.endswith("InsufficientWithdrawable"):  # JobMarket's and CollabMarket's pull balances
        which = "collab" if decoded.name.startswith("Collab") else "market"
        return InsufficientFundsError(
            f"{action}: insufficient {which} balance: {a['account']} has {from_wei(a['available'])} AGORA, "
            f"asked for {from_wei(a['requested'])} AGORA", error_name=decoded.name, args=a)
    return TransactionRevertedError(f"{action} reverted: {decoded}", error_name=decoded.name, args=a,
                                    tx_hash=tx_hash)
