"""EIP-712 typed data for bids: the same digest the market computes (`JobMarket.bidDigest`)."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import to_checksum_address

from marketplace.types import Bid, SignedBid

DOMAIN_NAME = "TensoragoraMarket"
DOMAIN_VERSION = "1"

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


def domain(chain_id: int, market: str) -> dict[str, Any]:
    """The market's EIP-712 domain: binds a signature to one chain and one market contract."""
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id,
            "verifyingContract": to_checksum_address(market)}


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
    return SignedBid(bid=bid, v=signed.v, r=signed.r.to_bytes(32, "big"), s=signed.s.to_bytes(32, "big"))


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


def sign_result(private_key: Any, job_id: bytes, result: bytes, *, chain_id: int, market: str) -> tuple[int, bytes, bytes]:
    """(v, r, s) over `Result(jobId, result)`, for the requester's `acceptSignedResult`."""
    return _sign(private_key, RESULT_TYPES, {"jobId": job_id, "result": result}, chain_id=chain_id, market=market)


def typed_digest(types: dict[str, list[dict[str, str]]], message: dict[str, Any], *, chain_id: int,
                 market: str) -> bytes:
    """Digest of any of this module's typed messages (for cross-checking against the contract)."""
    return bytes(_hash_eip191_message(encode_typed_data(domain(chain_id, market), types, message)))
