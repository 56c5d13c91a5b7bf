"""The market's verbs for requesters and providers, over one ChainClient.

Each method rebuilds the job struct from events when the contract needs it, simulates the transaction
(reverts surface as decoded project errors before anything is sent) and returns the receipt summary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from web3 import Web3

from marketplace.client import ChainClient, TxResult
from marketplace.errors import AgoraError, InsufficientFundsError, TransactionRevertedError
from marketplace.jobs import JobIndex, JobView
from marketplace.types import JobParams, SignedBid, b32, from_wei, job_id_for


class Market:
    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self.index = JobIndex(client.market, client.deployment.block)

    # ------------------------------------------------------------ views
    @property
    def address(self) -> str:
        return self.client.address

    def job(self, job_id: bytes | str) -> JobView:
        return self.index.view(b32(job_id))

    def token_balance(self, owner: str) -> int:
        return int(self.client.token.functions.balanceOf(Web3.to_checksum_address(owner)).call())

    def market_balance(self, owner: str) -> int:
        return int(self.client.market.functions.balanceOf(Web3.to_checksum_address(owner)).call())

    def allowance(self, owner: str, spender: str) -> int:
        return int(self.client.token.functions.allowance(Web3.to_checksum_address(owner),
                                                         Web3.to_checksum_address(spender)).call())

    def provider_info(self, provider: str) -> dict[str, Any]:
        info = self.client.registry.functions.providerInfo(Web3.to_checksum_address(provider)).call()
        keys = ("registered", "stake", "locked", "unbonding", "unbondingReadyAt", "jobsDone", "jobsFailed",
                "timesSlashed", "scoreBps", "metadataHash", "peerId")
        return dict(zip(keys, info))

    def nonce_used(self, provider: str, nonce: int) -> bool:
        return bool(self.client.market.functions.isNonceUsed(Web3.to_checksum_address(provider), nonce).call())

    def ensure_allowance(self, spender: str, amount: int) -> TxResult | None:
        """Approve `spender` for `amount` if the current allowance is lower (used by `--approve`)."""
        if self.allowance(self.address, spender) >= amount:
            return None
        return self.approve(spender, amount)

    # ------------------------------------------------------------ tokens and balances
    def approve(self, spender: str, amount: int) -> TxResult:
        return self.client.transact(self.client.token.functions.approve(Web3.to_checksum_address(spender), amount),
                                    action="approve")

    def transfer(self, to: str, amount: int) -> TxResult:
        have = self.token_balance(self.address)
        if have < amount:
            raise InsufficientFundsError(f"transfer: {self.address} has {from_wei(have)} AGORA, "
                                         f"needs {from_wei(amount)} AGORA")
        return self.client.transact(self.client.token.functions.transfer(Web3.to_checksum_address(to), amount),
                                    action="transfer")

    def faucet(self, amount: int, to: str | None = None) -> TxResult:
        return self.client.transact(self.client.token.functions.faucet(Web3.to_checksum_address(to or self.address),
                                                                        amount), action="faucet")

    def deposit(self, amount: int) -> TxResult:
        return self.client.transact(self.client.market.functions.deposit(amount), action="deposit")

    def withdraw(self, amount: int | None = None) -> TxResult:
        """Withdraw `amount` (default: everything) of the caller's market balance."""
        if amount is None:
            amount = self.market_balance(self.address)
            if amount == 0:
                raise InsufficientFundsError(f"withdraw: {self.address} has nothing to withdraw from the market")
        return self.client.transact(self.client.market.functions.withdraw(amount), action="withdraw")

    # ------------------------------------------------------------ provider registry
    def register(self, stake: int, peer_id: bytes, metadata_hash: bytes) -> TxResult:
        return self.client.transact(self.client.registry.functions.register(stake, peer_id, metadata_hash),
                                    action="register")

    def add_stake(self, amount: int) -> TxResult:
        return self.client.transact(self.client.registry.functions.addStake(amount), action="stake")

    def request_unstake(self, amount: int) -> TxResult:
        return self.client.transact(self.client.registry.functions.requestUnstake(amount), action="unstake")

    def withdraw_stake(self) -> TxResult:
        return self.client.transact(self.client.registry.functions.withdrawStake(), action="withdraw stake")

    def cancel_nonces(self, word_pos: int, mask: int) -> TxResult:
        return self.client.transact(self.client.market.functions.cancelNonces(word_pos, mask),
                                    action="cancel bids")

    # ------------------------------------------------------------ requester
    def open_job(self, params: JobParams, bids: Sequence[SignedBid] = ()) -> tuple[bytes, TxResult]:
        fn = self.client.market.functions.openJob(params.as_abi(), [b.as_abi() for b in bids])
        result = self.client.transact(fn, action="open job")
        return job_id_for(self.address, params.salt, result.block), result

    def assign(self, job_id: bytes, bids: Sequence[SignedBid]) -> TxResult:
        job = self._job(job_id)
        return self.client.transact(self.client.market.functions.assign(job_id, job, [b.as_abi() for b in bids]),
                                    action="assign")

    def cancel(self, job_id: bytes) -> TxResult:
        return self.client.transact(self.client.market.functions.cancel(job_id, self._job(job_id)), action="cancel")

    def accept(self, job_id: bytes) -> TxResult:
        return self.client.transact(self.client.market.functions.accept(job_id, self._job(job_id)), action="accept")

    def dispute(self, job_id: bytes, verifier_bids: Sequence[SignedBid], deadline: int) -> TxResult:
        fn = self.client.market.functions.dispute(job_id, self._job(job_id), [b.as_abi() for b in verifier_bids],
                                                  deadline)
        return self.client.transact(fn, action="dispute")

    def finalize(self, job_id: bytes) -> TxResult:
        return self.client.transact(self.client.market.functions.finalize(job_id, self._job(job_id)),
                                    action="finalize")

    def finalize_batch(self, job_ids: Sequence[bytes]) -> TxResult:
        """Settle every job of `job_ids` that is ready; ids already settled are skipped (by the contract)."""
        jobs = []
        for j in job_ids:
            view = self.job(j)  # JobNotFoundError for an id this market never opened
            if view.settled and view.job is not None:
                # finalizeBatch skips a settled job before reading its struct: its last known state will do.
                jobs.append(view.job.as_abi())
            else:
                jobs.append(self._job(j))
        return self.client.transact(self.client.market.functions.finalizeBatch(list(job_ids), jobs),
                                    action="finalize batch")

    # ------------------------------------------------------------ provider work
    def submit_result(self, job_id: bytes, result: bytes) -> TxResult:
        fn = self.client.market.functions.submitResult(job_id, self._job(job_id), result)
        return self.client.transact(fn, action="submit result")

    def commit(self, job_id: bytes, index: int, commitment: bytes) -> TxResult:
        fn = self.client.market.functions.commit(job_id, self._job(job_id), index, commitment)
        return self.client.transact(fn, action="commit")

    def reveal(self, job_id: bytes, index: int, result: bytes, salt: bytes) -> TxResult:
        fn = self.client.market.functions.reveal(job_id, self._job(job_id), index, result, salt)
        return self.client.transact(fn, action="reveal")

    def accept_signed_result(self, job_id: bytes, result: bytes, signature: tuple[int, bytes, bytes]) -> TxResult:
        """Requester: pay a k = 1 job at once with the provider's signed result (see eip712.sign_result)."""
        v, r, s = signature
        fn = self.client.market.functions.acceptSignedResult(job_id, self._job(job_id), result, v, r, s)
        return self.client.transact(fn, action="accept signed result")

    def commit_batch(self, job_id: bytes, signed_commits: Sequence[tuple[Any, ...]]) -> TxResult:
        """Post participants' signed commitments (see eip712.sign_commit) in one transaction."""
        fn = self.client.market.functions.commitBatch(job_id, self._job(job_id), list(signed_commits))
        return self.client.transact(fn, action="commit batch")

    def reveal_batch(self, job_id: bytes, reveals: Sequence[tuple[int, bytes, bytes]]) -> TxResult:
        """Open several commitments, given as (index, result, salt), in one transaction."""
        fn = self.client.market.functions.revealBatch(job_id, self._job(job_id), list(reveals))
        return self.client.transact(fn, action="reveal batch")

    def participant_index(self, job_id: bytes, provider: str | None = None) -> int:
        """Where `provider` (default: this account) sits among the job's commit-reveal participants."""
        view = self.job(job_id)
        who = Web3.to_checksum_address(provider or self.address)
        assert view.job is not None
        for i, a in enumerate(view.job.participants):
            if a.provider == who:
                return i
        raise AgoraError(f"{who} is not a participant of job {Web3.to_hex(job_id)}")

    def _job(self, job_id: bytes) -> tuple[Any, ...]:
        view = self.job(job_id)
        if view.settled or view.job is None:
            raise TransactionRevertedError(f"job {Web3.to_hex(job_id)} is already settled ({view.status})",
                                           error_name="MarketJobAlreadySettled")
        return view.job.as_abi()


def new_salt() -> bytes:
    return os.urandom(32)
