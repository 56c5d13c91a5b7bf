"""EIP-712 typed data for bids, commitments and results: the same digests the market computes
(`JobMarket.bidDigest`, `commitDigest`, `resultDigest`).

The domain's name and version are the market's own, read from its `eip712Domain()` (ERC-5267) and cached per
market address; nothing here hard-codes them. A `ChainClient` makes its market readable (`watch_market`), so
code that signs with only `chain_id` and `market` in hand finds the domain on first use. Offline signing (no
chain) states the domain explicitly with `set_domain`; `domain_of` is the pure constructor.
"""

from __future__ import annotations

import threading
from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import to_checksum_address

from marketplace.errors import ConfigError
from marketplace.types import Bid, BidSignature, SignedBid

# ERC-5267: fields bitmap 0x0f = name, version, chainId, verifyingContract (no salt, no extensions).
_ERC5267_ABI = [{
    "type": "function", "name": "eip712Domain", "stateMutability": "view", "inputs": [],
    "outputs": [{"name": "fields", "type": "bytes1"}, {"name": "name", "type": "string"},
                {"name": "version", "type": "string"}, {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"}, {"name": "salt", "type": "bytes32"},
                {"name": "extensions", "type": "uint256[]"}],
}]
_FIELDS = 0x0F

_lock = threading.Lock()
_names: dict[str, tuple[str, str]] = {}  # market address -> (name, version)
_connections: dict[str, Any] = {}  # market address -> a Web3 that can read it


def domain_of(name: str, version: str, chain_id: int, market: str) -> dict[str, Any]:
    """The EIP-712 domain with these values (pure): binds a signature to one chain and one market contract."""
    return {"name": name, "version": version, "chainId": chain_id, "verifyingContract": to_checksum_address(market)}


def read_domain(w3: Any, market: str) -> dict[str, Any]:
    """The market's EIP-712 domain as its `eip712Domain()` reports it (one eth_call, not cached).

    Raises ConfigError if the call fails or the domain is not the (name, version, chainId, verifyingContract)
    kind the market signs with.
    """
    address = to_checksum_address(market)
    try:
        fields, name, version, chain_id, verifying, _salt, extensions = (
            w3.eth.contract(address=address, abi=_ERC5267_ABI).functions.eip712Domain().call())
    except Exception as err:  # noqa: BLE001 - any RPC / decoding failure means: no usable domain here
        raise ConfigError(f"cannot read the EIP-712 domain of {address} (eip712Domain()): {err}") from err
    if bytes(fields) != bytes([_FIELDS]) or extensions or to_checksum_address(verifying) != address:
        raise ConfigError(f"{address} reports an unsupported EIP-712 domain: fields {bytes(fields).hex()}, "
                          f"verifyingContract {verifying}, extensions {list(extensions)}")
    return domain_of(name, version, int(chain_id), address)


def set_domain(market: str, name: str, version: str) -> None:
    """State the domain name and version of `market` (offline signing; a market read later replaces it)."""
    with _lock:
        _names[to_checksum_address(market)] = (name, version)


def watch_market(w3: Any, market: str) -> None:
    """Let `domain` read `market`'s domain through `w3` when first needed (ChainClient calls this; no RPC)."""
    with _lock:
        _connections[to_checksum_address(market)] = w3


def domain(chain_id: int, market: str) -> dict[str, Any]:
    """The EIP-712 domain of `market` on chain `chain_id`; its name and version are read from the market once
    (through the connection `watch_market` gave for it) and cached per market address.

    Raises ConfigError when the market is unknown and cannot be read.
    """
    address = to_checksum_address(market)
    with _lock:
        known = _names.get(address)
        w3 = _connections.get(address)
    if known is None:
        if w3 is None:
            raise ConfigError(f"EIP-712 domain of market {address} unknown: connect a ChainClient to it "
                              "first, or state it with eip712.set_domain")
        read = read_domain(w3, address)
        known = (read["name"], read["version"])
        with _lock:
            _names[address] = known
    return domain_of(known[0], known[1], chain_id, address)


BID_TYPES: dict[str, list[dict[str, str]]] = {
    "Bid": [
        {"name": "specHash", "type": "bytes32"},
        {"name": "requester", "type": "address"},
        {"name": "provider", "type": "address"},
        {"name": "price", "type": "uint96"},
        {"name": "collateral", "type": "uint96"},
        {"name": "runSeconds", "type": "uint32"},
        {"name": "minWindow", "type": "uint32"},
        {"name": "maxDeadline", "type": "uint64"},
        {"name": "expiry", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ]
}


def bid_digest(bid: Bid, *, chain_id: int, market: str) -> bytes:
    """The 32-byte digest a provider signs for `bid`."""
    signable = encode_typed_data(domain(chain_id, market), BID_TYPES, bid.as_message())
    return bytes(_hash_eip191_message(signable))


def sign_bid(private_key: Any, bid: Bid, *, chain_id: int, market: str) -> SignedBid:
    """Sign `bid` with the provider's key (bytes, hex or a LocalAccount's key).

    Raises ValueError when the key's address is not `bid.provider`.
    """
    key = getattr(private_key, "key", private_key)
    signer = Account.from_key(key).address
    if signer != to_checksum_address(bid.provider):
        raise ValueError(f"key of {signer} cannot sign a bid for provider {bid.provider}")
    signed = Account.sign_typed_data(key, domain(chain_id, market), BID_TYPES, bid.as_message())
    return SignedBid(bid=bid, signature=BidSignature(v=signed.v, r=signed.r.to_bytes(32, "big"),
                                                     s=signed.s.to_bytes(32, "big")))


def recover_bid_signer(signed: SignedBid, *, chain_id: int, market: str) -> str:
    """The address that signed `signed` under this chain and market (the provider, if genuine)."""
    digest = bid_digest(signed.bid, chain_id=chain_id, market=market)
    return Account._recover_hash(digest, vrs=(signed.v, int.from_bytes(signed.r, "big"),
                                               int.from_bytes(signed.s, "big")))


COMMIT_TYPES: dict[str, list[dict[str, str]]] = {
    "Commit": [{"name": "jobId", "type": "bytes32"}, {"name": "index", "type": "uint256"},
               {"name": "commitment", "type": "bytes32"}]
}
RESULT_TYPES: dict[str, list[dict[str, str]]] = {
    "Result": [{"name": "jobId", "type": "bytes32"}, {"name": "result", "type": "bytes32"}]
}


def _sign(private_key: Any, types: dict[str, list[dict[str, str]]], message: dict[str, Any], *, chain_id: int,
          market: str) -> tuple[int, bytes, bytes]:
    key = getattr(private_key, "key", private_key)
    signed = Account.sign_typed_data(key, domain(chain_id, market), types, message)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def sign_commit(private_key: Any, job_id: bytes, index: int, commitment: bytes, *, chain_id: int,
                market: str) -> tuple[Any, ...]:
    """A `SignedCommit` tuple (index, commitment, v, r, s) that anyone may post with `commitBatch`."""
    v, r, s = _sign(private_key, COMMIT_TYPES, {"jobId": job_id, "index": index, "commitment": commitment},
                    chain_id=chain_id, market=market)
    return (index, commitment, v, r, s)


def sign_result(private_key: Any, job_id: bytes, result: bytes, *, chain_id: int,
                market: str) -> tuple[int, bytes, bytes]:
    """(v, r, s) over `Result(jobId, result)`, for the requester's `acceptSignedResult`."""
    return _sign(private_key, RESULT_TYPES, {"jobId": job_id, "result": result}, chain_id=chain_id, market=market)


def typed_digest(types: dict[str, list[dict[str, str]]], message: dict[str, Any], *, chain_id: int,
                 market: str) -> bytes:
    """Digest of any of this module's typed messages (for cross-checking against the contract)."""
    return bytes(_hash_eip191_message(encode_typed_data(domain(chain_id, market), types, message)))
