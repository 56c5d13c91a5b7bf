// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {
    Assignment, Bid, Job, JobParams, JobPhase, Outcome, Reveal, SignedBid, SignedCommit
} from "../types/MarketTypes.sol";
import {IEscrow} from "./IEscrow.sol";
import {IUnorderedNonces} from "./IUnorderedNonces.sol";

/// @title Job market: off-chain negotiation, on-chain escrow, verification and settlement.
/// @notice A requester opens a job with providers' signed bids and locks the escrow in one transaction.
/// k = 1: the provider submits a result hash; the requester accepts, or disputes within the challenge window,
/// which escalates to re-execution by verifiers settled by commit-reveal majority. k >= 2: every provider commits
/// keccak256(abi.encode(jobId, provider, result, salt)), then reveals; a strict majority is paid. Anyone may
/// finalize after the deadlines, so no party can lock funds by vanishing. Payments are pull-based (IEscrow);
/// bids carry unordered nonces (IUnorderedNonces).
interface IJobMarket is IEscrow, IUnorderedNonces {
    event JobOpened(
        bytes32 indexed jobId,
        address indexed requester,
        bytes32 specHash,
        uint64 deadline,
        uint32 window,
        uint8 replicas,
        uint96 escrow,
        uint96 fromBalance,
        Assignment[] workers
    );
    /// @notice Providers chosen for a job opened without bids; `refund` is budget minus the sum of prices,
    /// credited back. (A job opened with bids lists its workers in JobOpened.)
    event JobAssigned(bytes32 indexed jobId, Assignment[] workers, uint96 refund);
    event ResultSubmitted(bytes32 indexed jobId, address indexed provider, bytes32 result, uint64 challengeEnd);
    event ResultCommitted(bytes32 indexed jobId, address indexed provider, uint256 index, bytes32 commitment);
    event ResultRevealed(bytes32 indexed jobId, address indexed provider, uint256 index, bytes32 result);
    event JobDisputed(bytes32 indexed jobId, Assignment[] verifiers, uint64 deadline, uint96 escrow);
    /// @notice Final state. Bit i of `paidMask` / `slashedMask` refers to participant i: the workers, or for a
    /// dispute the original worker (bit 0) then the verifiers. `refund` (unused escrow) and `compensation`
    /// (slashed collateral) were credited to the requester.
    event JobSettled(
        bytes32 indexed jobId,
        Outcome outcome,
        bytes32 result,
        uint256 paidMask,
        uint256 slashedMask,
        uint96 refund,
        uint96 compensation
    );

    error MarketZeroAddress();
    error MarketBadBounds();
    error MarketJobExists(bytes32 jobId);
    /// @notice No live job with this id: never opened, or already settled (settled jobs leave only events).
    error MarketUnknownJob(bytes32 jobId);
    /// @notice The job passed in calldata does not hash to the stored commitment.
    error MarketJobMismatch(bytes32 jobId);
    error MarketWrongPhase(bytes32 jobId, JobPhase phase);
    error MarketNotRequester(address caller, address requester);
    error MarketNotAssignedProvider(address caller, uint256 index);
    error MarketBadReplicas(uint256 replicas, uint256 maxReplicas);
    error MarketZeroBudget();
    error MarketDeadlineOutOfBounds(uint64 deadline, uint256 earliest, uint256 latest);
    error MarketWindowOutOfBounds(uint32 window, uint32 minWindow, uint32 maxWindow);
    error MarketBidMismatch(uint256 index, address provider);
    error MarketBidExpired(address provider, uint64 expiry, uint256 now_);
    error MarketBadBidSignature(address provider, address signer);
    error MarketBidNonceUsed(address provider, uint256 nonce);
    error MarketDeadlineTooShort(address provider, uint64 deadline, uint256 needed);
    error MarketDuplicateProvider(address provider);
    /// @notice A requester may not assign its own bid (self-dealing).
    error MarketSelfDealing(address provider);
    /// @notice The job's window is shorter than the provider's bid accepts.
    error MarketWindowTooShort(address provider, uint32 window, uint32 minWindow);
    /// @notice The job's deadline is later than the provider's bid accepts.
    error MarketDeadlineTooLate(address provider, uint64 deadline, uint64 maxDeadline);
    error MarketOverBudget(uint256 total, uint96 budget);
    error MarketInsufficientAllowance(address owner, uint256 allowance, uint256 needed);
    error MarketInsufficientBalance(address owner, uint256 balance, uint256 needed);
    error MarketZeroResult();
    error MarketDeadlinePassed(uint64 deadline, uint256 now_);
    error MarketChallengeWindowClosed(uint64 challengeEnd, uint256 now_);
    error MarketBadVerifierCount(uint256 count, uint256 min, uint256 max);
    error MarketDisputeTooCostly(uint256 cost, uint96 collateral);
    error MarketAlreadyCommitted(uint256 index);
    error MarketNotCommitted(uint256 index);
    error MarketAlreadyRevealed(uint256 index);
    error MarketRevealNotOpen(uint64 deadline, uint256 now_);
    error MarketRevealClosed(uint256 revealEnd, uint256 now_);
    error MarketCommitmentMismatch(uint256 index);
    error MarketNotFinalizable(bytes32 jobId, JobPhase phase, uint256 readyAt);
    error MarketLengthMismatch(uint256 ids, uint256 jobs);
    error MarketZeroAmount();
    error MarketBadCommitSignature(uint256 index, address signer);
    error MarketBadResultSignature(address provider, address signer);
    error MarketWrongBidCount(uint256 given, uint256 expected);
    error MarketInsufficientWithdrawable(address account, uint256 available, uint256 requested);

    /// @notice Open a job and, when `bids` is non-empty, assign them and lock the sum of their prices in escrow,
    /// all in one transaction. With no bids the job stays Open with `params.budget` escrowed until `assign` or
    /// `cancel`. Escrow comes from the caller's market balance first, then from its token allowance.
    /// @return jobId keccak256(abi.encode(msg.sender, params.salt, block.number)): never reused, even after the
    /// job settles and its slot is deleted (a job settled in its opening block leaves a tombstone), so no
    /// signature over a job id can be replayed.
    function openJob(JobParams calldata params, SignedBid[] calldata bids) external returns (bytes32 jobId);

    /// @notice Requester only: assign `job.replicas` bids to an Open job; the unspent budget is credited back.
    function assign(bytes32 jobId, Job calldata job, SignedBid[] calldata bids) external;

    /// @notice Requester only: cancel an Open job (before assignment) and get the budget back.
    function cancel(bytes32 jobId, Job calldata job) external;

    /// @notice Assigned provider of a k = 1 job: submit the result hash before the deadline; opens the
    /// challenge window.
    function submitResult(bytes32 jobId, Job calldata job, bytes32 result) external;

    /// @notice Requester only: accept a submitted k = 1 result; pays the provider at once.
    function accept(bytes32 jobId, Job calldata job) external;

    /// @notice Requester only, inside the challenge window: dispute a k = 1 result. The verifiers' bids are
    /// assigned and their prices escrowed; their total may not exceed the provider's collateral, so a lying
    /// provider always pays for its verification. The original result stands unless a strict majority of all
    /// participants (worker plus verifiers) reveals one other value; verifiers that do not reveal are slashed.
    function dispute(bytes32 jobId, Job calldata job, SignedBid[] calldata verifierBids, uint64 deadline) external;

    /// @notice Participant `index` commits keccak256(abi.encode(jobId, msg.sender, result, salt)) before the
    /// deadline (k >= 2 workers, or verifiers of a dispute at index >= 1).
    function commit(bytes32 jobId, Job calldata job, uint256 index, bytes32 commitment) external;

    /// @notice Reveal a committed result, once every participant has committed or the deadline passed, and
    /// before deadline + window. The last expected reveal settles the job.
    function reveal(bytes32 jobId, Job calldata job, uint256 index, bytes32 result, bytes32 salt) external;

    /// @notice Requester only: accept a k = 1 job's result that the provider signed off-chain
    /// (EIP-712 `Result(bytes32 jobId,bytes32 result)`), paying it at once: one transaction instead of the
    /// provider's submitResult plus accept. The provider can always fall back to submitResult itself.
    function acceptSignedResult(bytes32 jobId, Job calldata job, bytes32 result, uint8 v, bytes32 r, bytes32 s)
        external;

    /// @notice Anyone: post participants' signed commitments in one transaction (same rules as commit;
    /// indices already committed are skipped).
    function commitBatch(bytes32 jobId, Job calldata job, SignedCommit[] calldata commits) external;

    /// @notice Anyone: open several commitments in one transaction (same rules as reveal); settles the job
    /// when the last expected reveal is in.
    function revealBatch(bytes32 jobId, Job calldata job, Reveal[] calldata reveals) external;

    /// @notice Anyone: settle a job whose deadlines have passed (or whose results are all in).
    function finalize(bytes32 jobId, Job calldata job) external;

    /// @notice Anyone: finalize many jobs in one transaction; jobs no longer live (settled meanwhile) are skipped.
    /// @return settled Number of jobs this call settled.
    function finalizeBatch(bytes32[] calldata jobIds, Job[] calldata jobs) external returns (uint256 settled);

    /// @notice The EIP-712 digest a provider signs for `bid`.
    function bidDigest(Bid calldata bid) external view returns (bytes32);

    /// @notice The EIP-712 digest a participant signs to have `commitment` posted for it by someone else.
    function commitDigest(bytes32 jobId, uint256 index, bytes32 commitment) external view returns (bytes32);

    /// @notice The EIP-712 digest a k = 1 provider signs over its result for `acceptSignedResult`.
    function resultDigest(bytes32 jobId, bytes32 result) external view returns (bytes32);

    /// @notice Raw job slot: the top 192 bits of keccak256(abi.encode(job)), the opening block number (32 bits),
    /// then two 16-bit bitmaps (committed, revealed). 0 = no live job (unknown, or settled); 1 = settled in the
    /// block that opened it (kept so the id cannot be opened again in that block).
    function jobSlot(bytes32 jobId) external view returns (uint256);

    /// @notice keccak256(abi.encode(job)) with its low 64 bits cleared, as compared against `jobSlot`.
    function hashJob(Job calldata job) external pure returns (uint256);

    /// @notice The commitment participant `provider` must publish for `result` and `salt`.
    function commitmentOf(bytes32 jobId, address provider, bytes32 result, bytes32 salt)
        external
        pure
        returns (bytes32);

    /// @notice Commitment, then revealed result, of participant `index`.
    function resultOf(bytes32 jobId, uint256 index) external view returns (bytes32);

    /// @notice Deploy-time bounds: deadline in [now + minRun, now + maxRun], window in [minWindow, maxWindow].
    function bounds() external view returns (uint32 minRun, uint32 maxRun, uint32 minWindow, uint32 maxWindow);

    function token() external view returns (address);

    function registry() external view returns (address);

    function maxReplicas() external pure returns (uint256);
}
