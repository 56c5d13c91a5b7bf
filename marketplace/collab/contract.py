"""The CollabMarket contract from Python: open, settle, claim, close, withdraw, and the EIP-712 receipts.

A requester signs, after each round, a cumulative `Receipt(jobId, provider, count)` for every provider
accepted so far (`sign_receipt`); it settles once at the end (`CollabContract.settle`). A provider keeps only its
latest receipt and claims with it when the settlement paid it less, or when the requester vanished (`claim`).
Like `marketplace.market.Market`, every transaction is simulated first, so a call that would revert raises the
decoded project error and sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, Web3RPCError

from marketplace.client import ChainClient, TxResult
from marketplace.compiled import load_artifact
from marketplace.errors import AgoraError, DeploymentError, InsufficientFundsError
from marketplace.revert import decode_revert, revert_data_of, to_agora_error
from marketplace.types import b32, from_wei

CONTRACT_NAME = "CollabMarket"
DOMAIN_NAME = "AgoraCollab"
DOMAIN_VERSION = "1"
RECEIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "Receipt": [{"name": "jobId", "type": "bytes32"}, {"name": "provider", "type": "address"},
                {"name": "count", "type": "uint32"}]
}
#: CollabPhase in contracts/interfaces/ICollabMarket.sol, by value, spelled as in Solidity.
PHASES: tuple[str, ...] = ("None", "Open", "Settled", "Closed")

Signature = tuple[int, bytes, bytes]


# ------------------------------------------------------------------ ids and receipts (no chain needed)

def job_id_for(requester: str, salt: bytes) -> bytes:
    """keccak256(abi.encode(requester, salt)): the id openCollab will give, known before sending, so a
    requester that crashed mid-open can look its job up instead of opening (and paying for) another."""
    return keccak(abi_encode(["address", "bytes32"], [to_checksum_address(requester), b32(salt)]))


def collab_domain(chain_id: int, contract: str) -> dict[str, Any]:
    """The EIP-712 domain of receipts: binds them to one chain and one CollabMarket."""
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id,
            "verifyingContract": to_checksum_address(contract)}


def _receipt_message(job_id: bytes, provider: str, count: int) -> dict[str, Any]:
    return {"jobId": b32(job_id), "provider": to_checksum_address(provider), "count": int(count)}


def receipt_digest(chain_id: int, contract: str, job_id: bytes, provider: str, count: int) -> bytes:
    """The 32-byte digest the requester signs (equal to the contract's `receiptDigest`)."""
    signable = encode_typed_data(collab_domain(chain_id, contract), RECEIPT_TYPES,
                                 _receipt_message(job_id, provider, count))
    return bytes(_hash_eip191_message(signable))


def sign_receipt(account: Any, chain_id: int, contract: str, job_id: bytes, provider: str,
                 count: int) -> Signature:
    """(v, r, s) of the requester's `account` (LocalAccount or key) over Receipt(job_id, provider, count)."""
    key = getattr(account, "key", account)
    signed = Account.sign_typed_data(key, collab_domain(chain_id, contract), RECEIPT_TYPES,
                                     _receipt_message(job_id, provider, count))
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def recover_receipt_signer(chain_id: int, contract: str, job_id: bytes, provider: str, count: int,
                           signature: Signature) -> str:
    """Who signed `signature` over this receipt (the job's requester, if genuine): a provider checks each
    receipt it gets before counting on it."""
    v, r, s = signature
    digest = receipt_digest(chain_id, contract, job_id, provider, count)
    return str(Account._recover_hash(digest, vrs=(v, int.from_bytes(r, "big"), int.from_bytes(s, "big"))))


# ------------------------------------------------------------------ views

@dataclass(frozen=True)
class CollabJobView:
    """One job as the chain sees it. `phase` is "None" (never opened), "Open", "Settled" or "Closed";
    providers, prices and counts are index-aligned (counts: contributions credited so far)."""

    job_id: bytes
    requester: str
    spec_hash: bytes
    rounds: int
    deadline: int
    claim_window: int
    claim_end: int
    phase: str
    escrow: int
    paid: int
    model_hash: bytes
    providers: tuple[str, ...]
    prices: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def exists(self) -> bool:
        return self.phase != "None"

    @property
    def unspent(self) -> int:
        """Escrow not (yet) credited to providers: what `close` refunds."""
        return self.escrow - self.paid

    @property
    def claims_end(self) -> int:
        """Last second a claim is accepted: claim_end once settled (the contract sets it to
        max(settle time, deadline) + claim_window, so an early settle never cuts the claims short), else
        deadline + claim_window."""
        return self.claim_end if self.phase == "Settled" else self.deadline + self.claim_window

    def index_of(self, provider: str) -> int:
        """Seat of `provider`; raises AgoraError when it is not a participant."""
        who = to_checksum_address(provider)
        try:
            return self.providers.index(who)
        except ValueError:
            raise AgoraError(f"{who} is not a participant of collab job {Web3.to_hex(self.job_id)}") from None


_REVERTS: tuple[type[BaseException], ...] = (ContractLogicError, Web3RPCError, ValueError)


# ------------------------------------------------------------------ the contract

class CollabContract:
    """CollabMarket of one deployment, seen by `client`'s account (None: views only).

    Raises DeploymentError when the deployment predates CollabMarket.
    """

    def __init__(self, client: ChainClient) -> None:
        address = client.deployment.collab
        if not address:
            cid = client.deployment.chain_id
            raise DeploymentError(f"this deployment (chain {cid}) has no CollabMarket; "
                                  "redeploy with `agora deploy`")
        self.client = client
        self.contract: Contract = client.w3.eth.contract(address=Web3.to_checksum_address(address),
                                                         abi=load_artifact(CONTRACT_NAME)["abi"])

    @property
    def address(self) -> str:
        """The CollabMarket's address (the receipts' verifyingContract)."""
        return str(self.contract.address)

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    # ------------------------------------------------------------ views
    def job_id_for(self, requester: str, salt: bytes) -> bytes:
        return job_id_for(requester, salt)

    def job(self, job_id: bytes | str) -> CollabJobView:
        """The job's state; phase "None" for an id never opened (no revert)."""
        jid = b32(job_id)
        fns = self.contract.functions
        block = self.client.w3.eth.block_number  # both reads at one block: a claim between them is not half-seen
        j = self.client.call(fns.job(jid), action="read collab job", block=block)
        providers, prices, counts = self.client.call(fns.participants(jid), action="read collab participants",
                                                     block=block)
        (requester, spec_hash, rounds, deadline, claim_window, claim_end, phase, escrow, paid, model_hash,
         _size) = j
        return CollabJobView(job_id=jid, requester=to_checksum_address(requester), spec_hash=bytes(spec_hash),
                             rounds=int(rounds), deadline=int(deadline), claim_window=int(claim_window),
                             claim_end=int(claim_end), phase=PHASES[int(phase)], escrow=int(escrow),
                             paid=int(paid), model_hash=bytes(model_hash),
                             providers=tuple(to_checksum_address(p) for p in providers),
                             prices=tuple(int(p) for p in prices), counts=tuple(int(c) for c in counts))

    def balance(self, owner: str) -> int:
        """Withdrawable balance of `owner` in the collab market (earnings and refunds)."""
        return int(self.client.call(self.contract.functions.balanceOf(to_checksum_address(owner)),
                                    action="read collab balance"))

    def receipt_digest(self, job_id: bytes, provider: str, count: int) -> bytes:
        return receipt_digest(self.chain_id, self.address, job_id, provider, count)

    def sign_receipt(self, job_id: bytes, provider: str, count: int) -> Signature:
        """This (requester) account's receipt for `provider`: `count` accepted contributions so far."""
        return sign_receipt(self.client.account, self.chain_id, self.address, job_id, provider, count)

    def recover_receipt_signer(self, job_id: bytes, provider: str, count: int, signature: Signature) -> str:
        return recover_receipt_signer(self.chain_id, self.address, job_id, provider, count, signature)

    # ------------------------------------------------------------ requester
    def open(self, spec_hash: bytes, salt: bytes, rounds: int, deadline: int, claim_window: int,
             providers: Sequence[str], prices: Sequence[int], *,
             approve: bool = True) -> tuple[bytes, TxResult]:
        """Open a job and lock sum(prices) * rounds; returns (job id, receipt).

        With `approve` (default) the collab market's token allowance is raised to the escrow first if lower.
        Raises InsufficientFundsError (token balance or allowance short, with both amounts) before anything is
        sent, TransactionRevertedError for bad terms (e.g. CollabDuplicateProvider, CollabJobExists).
        """
        escrow = sum(int(p) for p in prices) * int(rounds)
        seats = [to_checksum_address(p) for p in providers]
        fn = self.contract.functions.openCollab(b32(spec_hash), b32(salt), int(rounds), int(deadline),
                                                int(claim_window), seats, [int(p) for p in prices])
        if escrow > 0 and approve:
            self._ensure_allowance(fn, escrow)
        result = self.client.transact(fn, action="open collab job")
        return job_id_for(self.client.address, salt), result

    def settle(self, job_id: bytes, model_hash: bytes, counts: Sequence[int]) -> TxResult:
        """Requester: credit every provider counts[i] * prices[i] (less earlier claims); once per job.

        Claims stay open, and the job unclosable, until max(now, deadline) + claim_window: settling early
        does not let the requester take the escrow back before the providers' receipts are due."""
        fn = self.contract.functions.settle(b32(job_id), b32(model_hash), [int(c) for c in counts])
        return self.client.transact(fn, action="settle collab job")

    # ------------------------------------------------------------ providers, anyone
    def claim(self, job_id: bytes, index: int, count: int, sig: Signature) -> TxResult:
        """Credit providers[index] for a requester-signed receipt above its recorded count (any sender)."""
        v, r, s = sig
        fn = self.contract.functions.claim(b32(job_id), int(index), int(count), int(v), b32(r), b32(s))
        return self.client.transact(fn, action="claim contribution")

    def close(self, job_id: bytes) -> TxResult:
        """Refund the unspent escrow to the requester once claims are over (any sender): after claim_end,
        or deadline + claim_window when never settled (`CollabJobView.claims_end`)."""
        return self.client.transact(self.contract.functions.close(b32(job_id)), action="close collab job")

    def withdraw(self, amount: int | None = None) -> TxResult:
        """Withdraw `amount` (default: everything) of this account's collab balance as tokens."""
        if amount is None:
            amount = self.balance(self.client.address)
            if amount == 0:
                raise InsufficientFundsError(
                    f"withdraw: {self.client.address} has nothing to withdraw from the collab market")
        return self.client.transact(self.contract.functions.withdraw(int(amount)),
                                    action="withdraw from collab market")

    # ------------------------------------------------------------ internals
    def _ensure_allowance(self, open_fn: Any, amount: int) -> None:
        """Approve the escrow when the allowance is short, but only for an open that can succeed: the tokens
        must be there, and simulating the open must fail for the allowance alone (the contract checks every
        term before pulling), so bad terms raise their own error and send no approval either."""
        owner = self.client.address
        token = self.client.token.functions
        if int(token.allowance(owner, self.address).call()) >= amount:
            return
        have = int(token.balanceOf(owner).call())
        if have < amount:
            raise InsufficientFundsError(
                f"open collab job: insufficient token balance: {owner} has {from_wei(have)} AGORA, "
                f"needs {from_wei(amount)} AGORA", error_name="CollabInsufficientBalance",
                args={"owner": owner, "balance": have, "needed": amount})
        refusal = self._refusal(open_fn, "open collab job")
        if refusal is not None and getattr(refusal, "error_name", None) != "CollabInsufficientAllowance":
            raise refusal
        self.client.transact(token.approve(self.address, amount), action="approve collab market")

    def _refusal(self, fn: Any, action: str) -> AgoraError | None:
        """The decoded error `fn` reverts with when simulated now; None if it would succeed or the revert is
        not one the project's ABIs know."""
        try:
            fn.call({"from": self.client.address})
        except _REVERTS as exc:
            if decode_revert(revert_data_of(exc)) is not None:
                return to_agora_error(exc, action=action)
        return None
