// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Escrow} from "./base/Escrow.sol";
import {UnorderedNonces} from "./base/UnorderedNonces.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {MajorityTally} from "./libraries/MajorityTally.sol";
import {JobSlot, JobSlotLibrary} from "./types/JobSlot.sol";
import {
    Assignment,
    Bid,
    CollateralOutcome,
    Job,
    JobParams,
    JobPhase,
    Outcome,
    Reveal,
    SignedBid,
    SignedCommit
} from "./types/MarketTypes.sol";

/// @title JobMarket
/// @notice Escrow, verification and settlement of compute jobs negotiated off-chain (see IJobMarket).
/// Invariant: token.balanceOf(this) == escrow of live jobs + sum of market balances.
/// @dev Balances, deposits and withdrawals are the Escrow base's; bid nonces the UnorderedNonces base's; a job's
/// storage word is a JobSlot; majority counting is MajorityTally's.
contract JobMarket is IJobMarket, EIP712, Escrow, UnorderedNonces {

    bytes32 private constant _BID_TYPEHASH = keccak256(
        "Bid(bytes32 specHash,address requester,address provider,uint96 price,uint96 collateral,uint32 runSeconds,uint32 minWindow,uint64 maxDeadline,uint64 expiry,uint256 nonce)"
    );
    bytes32 private constant _COMMIT_TYPEHASH = keccak256("Commit(bytes32 jobId,uint256 index,bytes32 commitment)");
    bytes32 private constant _RESULT_TYPEHASH = keccak256("Result(bytes32 jobId,bytes32 result)");
    uint256 private constant _MAX_REPLICAS = 15;
    // Positions of Job fields in its ABI head (see MarketTypes.sol).
    uint256 private constant _FIELD_PHASE = 5;
    uint256 private constant _FIELD_RESULT = 7;
    uint256 private constant _FIELD_CHALLENGE_END = 8;

    IProviderRegistry private immutable _registry;
    uint32 private immutable _minRun;
    uint32 private immutable _maxRun;
    uint32 private immutable _minWindow;
    uint32 private immutable _maxWindow;

    /// @dev Deleted at settlement (gas refund), except a job settled in its opening block, which leaves
    /// JobSlotLibrary.TOMBSTONE so its id stays unique.
    mapping(bytes32 jobId => JobSlot) private _jobs;
    /// @dev Commitment of participant i, replaced by its result on reveal; cleared at settlement.
    mapping(bytes32 jobId => mapping(uint256 index => bytes32)) private _results;

    /// @dev What every bid of a job must agree to.
    struct Terms {
        bytes32 specHash;
        address requester;
        uint64 deadline;
        uint32 window;
    }

    /// @dev Running totals of a majority settlement.
    struct Tally {
        bytes32 winner;
        bool hasWinner;
        uint256 paidMask;
        uint256 slashedMask;
        uint256 refund;
        uint256 compensation;
    }

    /// @param token_ Payment token (any ERC-20).
    /// @param registry_ The provider registry, deployed just before with this market's address.
    /// @param minRun_ Shortest time from now to a job's result deadline.
    /// @param maxRun_ Longest time from now to a job's result deadline.
    /// @param minWindow_ Shortest challenge / reveal window.
    /// @param maxWindow_ Longest challenge / reveal window.
    constructor(
        IERC20 token_,
        IProviderRegistry registry_,
        uint32 minRun_,
        uint32 maxRun_,
        uint32 minWindow_,
        uint32 maxWindow_
    ) EIP712("TensoragoraMarket", "1") Escrow(token_) {
        if (address(token_) == address(0) || address(registry_) == address(0)) revert MarketZeroAddress();
        if (minRun_ > maxRun_ || minWindow_ > maxWindow_ || minWindow_ == 0) revert MarketBadBounds();
        _registry = registry_;
        (_minRun, _maxRun, _minWindow, _maxWindow) = (minRun_, maxRun_, minWindow_, maxWindow_);
    }

    // ------------------------------------------------------------------ requester

    /// @inheritdoc IJobMarket
    function openJob(JobParams calldata params, SignedBid[] calldata bids)
        external
        nonReentrant
        returns (bytes32 jobId)
    {
        jobId = keccak256(abi.encode(msg.sender, params.salt, block.number));
        if (JobSlot.unwrap(_jobs[jobId]) != 0) revert MarketJobExists(jobId);
        _checkTiming(params.deadline, params.window);
        Job memory job;
        job.requester = msg.sender;
        job.specHash = params.specHash;
        job.deadline = params.deadline;
        job.window = params.window;
        uint96 escrow;
        if (bids.length == 0) {
            if (params.replicas == 0 || params.replicas > _MAX_REPLICAS) {
                revert MarketBadReplicas(params.replicas, _MAX_REPLICAS);
            }
            if (params.budget == 0) revert MarketZeroBudget();
            (job.replicas, job.phase, job.budget) = (params.replicas, JobPhase.Open, params.budget);
            escrow = params.budget;
        } else {
            if (bids.length > _MAX_REPLICAS) revert MarketBadReplicas(bids.length, _MAX_REPLICAS);
            (job.replicas, job.phase) = (uint8(bids.length), JobPhase.Assigned);
            Terms memory terms = Terms(job.specHash, msg.sender, job.deadline, job.window);
            (job.workers, escrow) = _takeBids(terms, bids, job.workers);
        }
        _jobs[jobId] = JobSlotLibrary.open(_hashMemory(job), block.number);
        uint96 fromBalance = _useBalance(msg.sender, escrow);
        emit JobOpened(
            jobId, msg.sender, job.specHash, job.deadline, job.window, job.replicas, escrow, fromBalance, job.workers
        );
        _pull(msg.sender, escrow - fromBalance);
    }

    /// @inheritdoc IJobMarket
    function assign(bytes32 jobId, Job calldata job, SignedBid[] calldata bids) external nonReentrant {
        JobSlot slot = _load(jobId, job);
        _onlyRequester(job);
        _expectPhase(jobId, job, JobPhase.Open);
        if (bids.length != job.replicas) revert MarketWrongBidCount(bids.length, job.replicas);
        Job memory next = job;
        uint96 total;
        (next.workers, total) =
            _takeBids(Terms(job.specHash, job.requester, job.deadline, job.window), bids, job.workers);
        if (total > job.budget) revert MarketOverBudget(total, job.budget);
        uint96 refund = job.budget - total;
        (next.phase, next.budget) = (JobPhase.Assigned, 0);
        _jobs[jobId] = slot.withHash(_hashMemory(next));
        _update(job.requester, refund, true);
        emit JobAssigned(jobId, next.workers, refund);
    }

    /// @inheritdoc IJobMarket
    function cancel(bytes32 jobId, Job calldata job) external nonReentrant {
        _load(jobId, job);
        _onlyRequester(job);
        _expectPhase(jobId, job, JobPhase.Open);
        _closeOpen(jobId, job);
    }

    /// @inheritdoc IJobMarket
    function accept(bytes32 jobId, Job calldata job) external nonReentrant {
        _load(jobId, job);
        _onlyRequester(job);
        _expectPhase(jobId, job, JobPhase.Submitted);
        _completeSingle(jobId, job);
    }

    /// @inheritdoc IJobMarket
    function dispute(bytes32 jobId, Job calldata job, SignedBid[] calldata verifierBids, uint64 deadline)
        external
        nonReentrant
    {
        JobSlot slot = _load(jobId, job);
        _onlyRequester(job);
        _expectPhase(jobId, job, JobPhase.Submitted);
        if (block.timestamp > job.challengeEnd) revert MarketChallengeWindowClosed(job.challengeEnd, block.timestamp);
        if (verifierBids.length < 2 || verifierBids.length >= _MAX_REPLICAS) {
            revert MarketBadVerifierCount(verifierBids.length, 2, _MAX_REPLICAS - 1);
        }
        _checkTiming(deadline, job.window);
        Job memory next = job;
        uint96 cost;
        (next.verifiers, cost) =
            _takeBids(Terms(job.specHash, job.requester, deadline, job.window), verifierBids, job.workers);
        if (cost > job.workers[0].collateral) revert MarketDisputeTooCostly(cost, job.workers[0].collateral);
        (next.phase, next.deadline) = (JobPhase.Disputed, deadline);
        // Participant 0 (the original worker) counts as committed and revealed with `job.result`.
        _jobs[jobId] = slot.withHash(_hashMemory(next)).setCommitted(0).setRevealed(0);
        uint96 fromBalance = _useBalance(job.requester, cost);
        emit JobDisputed(jobId, next.verifiers, deadline, cost);
        _pull(job.requester, cost - fromBalance);
    }

    /// @inheritdoc IJobMarket
    function acceptSignedResult(bytes32 jobId, Job calldata job, bytes32 result, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
    {
        _load(jobId, job);
        _onlyRequester(job);
        if (job.phase != JobPhase.Assigned || job.replicas != 1) revert MarketWrongPhase(jobId, job.phase);
        if (result == bytes32(0)) revert MarketZeroResult();
        address provider = job.workers[0].provider;
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(_RESULT_TYPEHASH, jobId, result)));
        (address signer,,) = ECDSA.tryRecover(digest, v, r, s);
        if (signer != provider) revert MarketBadResultSignature(provider, signer);
        emit ResultSubmitted(jobId, provider, result, uint64(block.timestamp));
        _pay(jobId, job.workers[0], result);
    }

    // ------------------------------------------------------------------ providers

    /// @inheritdoc IJobMarket
    function submitResult(bytes32 jobId, Job calldata job, bytes32 result) external {
        bytes memory encoded = abi.encode(job);
        JobSlot slot = _jobs[jobId];
        _check(jobId, slot, uint256(keccak256(encoded)));
        if (job.phase != JobPhase.Assigned || job.replicas != 1) revert MarketWrongPhase(jobId, job.phase);
        if (msg.sender != job.workers[0].provider) revert MarketNotAssignedProvider(msg.sender, 0);
        if (block.timestamp > job.deadline) revert MarketDeadlinePassed(job.deadline, block.timestamp);
        if (result == bytes32(0)) revert MarketZeroResult();
        uint64 challengeEnd = uint64(block.timestamp) + job.window;
        // Patch phase, result and challengeEnd in place in the job's ABI encoding and hash it again, instead of
        // copying the struct to memory and encoding it a second time.
        _setField(encoded, _FIELD_PHASE, uint256(JobPhase.Submitted));
        _setField(encoded, _FIELD_RESULT, uint256(result));
        _setField(encoded, _FIELD_CHALLENGE_END, challengeEnd);
        _jobs[jobId] = slot.withHash(uint256(keccak256(encoded)));
        emit ResultSubmitted(jobId, msg.sender, result, challengeEnd);
    }

    /// @inheritdoc IJobMarket
    function commit(bytes32 jobId, Job calldata job, uint256 index, bytes32 commitment) external {
        JobSlot slot = _load(jobId, job);
        (Assignment calldata a,) = _participant(jobId, job, index);
        if (msg.sender != a.provider) revert MarketNotAssignedProvider(msg.sender, index);
        if (block.timestamp > job.deadline) revert MarketDeadlinePassed(job.deadline, block.timestamp);
        if (slot.isCommitted(index)) revert MarketAlreadyCommitted(index);
        if (commitment == bytes32(0)) revert MarketZeroResult();
        _results[jobId][index] = commitment;
        _jobs[jobId] = slot.setCommitted(index);
        emit ResultCommitted(jobId, msg.sender, index, commitment);
    }

    /// @inheritdoc IJobMarket
    function commitBatch(bytes32 jobId, Job calldata job, SignedCommit[] calldata commits) external {
        JobSlot slot = _load(jobId, job);
        if (block.timestamp > job.deadline) revert MarketDeadlinePassed(job.deadline, block.timestamp);
        for (uint256 i = 0; i < commits.length; ++i) {
            SignedCommit calldata c = commits[i];
            (Assignment calldata a,) = _participant(jobId, job, c.index);
            if (slot.isCommitted(c.index)) continue;
            if (c.commitment == bytes32(0)) revert MarketZeroResult();
            bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(_COMMIT_TYPEHASH, jobId, c.index, c.commitment)));
            (address signer,,) = ECDSA.tryRecover(digest, c.v, c.r, c.s);
            if (signer != a.provider) revert MarketBadCommitSignature(c.index, signer);
            _results[jobId][c.index] = c.commitment;
            slot = slot.setCommitted(c.index);
            emit ResultCommitted(jobId, a.provider, c.index, c.commitment);
        }
        _jobs[jobId] = slot;
    }

    /// @inheritdoc IJobMarket
    function reveal(bytes32 jobId, Job calldata job, uint256 index, bytes32 result, bytes32 salt)
        external
        nonReentrant
    {
        JobSlot slot = _load(jobId, job);
        (Assignment calldata a, uint256 n) = _participant(jobId, job, index);
        if (msg.sender != a.provider) revert MarketNotAssignedProvider(msg.sender, index);
        slot = _reveal(jobId, job, slot, n, index, a.provider, result, salt);
        _afterReveals(jobId, job, slot, n);
    }

    /// @inheritdoc IJobMarket
    function revealBatch(bytes32 jobId, Job calldata job, Reveal[] calldata reveals) external nonReentrant {
        JobSlot slot = _load(jobId, job);
        uint256 n;
        for (uint256 i = 0; i < reveals.length; ++i) {
            Reveal calldata rv = reveals[i];
            Assignment calldata a;
            (a, n) = _participant(jobId, job, rv.index);
            slot = _reveal(jobId, job, slot, n, rv.index, a.provider, rv.result, rv.salt);
        }
        if (reveals.length != 0) _afterReveals(jobId, job, slot, n);
    }

    // ------------------------------------------------------------------ anyone

    /// @inheritdoc IJobMarket
    function finalize(bytes32 jobId, Job calldata job) external nonReentrant {
        JobSlot slot = _load(jobId, job);
        uint256 readyAt = _tryFinalize(jobId, job, slot);
        if (readyAt != 0) revert MarketNotFinalizable(jobId, job.phase, readyAt);
    }

    /// @inheritdoc IJobMarket
    function finalizeBatch(bytes32[] calldata jobIds, Job[] calldata jobs)
        external
        nonReentrant
        returns (uint256 settled)
    {
        if (jobIds.length != jobs.length) revert MarketLengthMismatch(jobIds.length, jobs.length);
        for (uint256 i = 0; i < jobIds.length; ++i) {
            if (!_jobs[jobIds[i]].isLive()) continue; // settled meanwhile (or never opened)
            JobSlot slot = _load(jobIds[i], jobs[i]);
            uint256 readyAt = _tryFinalize(jobIds[i], jobs[i], slot);
            if (readyAt != 0) revert MarketNotFinalizable(jobIds[i], jobs[i].phase, readyAt);
            ++settled;
        }
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IJobMarket
    function bidDigest(Bid calldata bid) external view returns (bytes32) {
        return _bidDigest(bid);
    }

    /// @inheritdoc IJobMarket
    function commitDigest(bytes32 jobId, uint256 index, bytes32 commitment) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_COMMIT_TYPEHASH, jobId, index, commitment)));
    }

    /// @inheritdoc IJobMarket
    function resultDigest(bytes32 jobId, bytes32 result) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_RESULT_TYPEHASH, jobId, result)));
    }

    /// @inheritdoc IJobMarket
    function jobSlot(bytes32 jobId) external view returns (uint256) {
        return uint256(JobSlot.unwrap(_jobs[jobId]));
    }

    /// @inheritdoc IJobMarket
    function hashJob(Job calldata job) external pure returns (uint256) {
        return _hashCalldata(job);
    }

    /// @inheritdoc IJobMarket
    function commitmentOf(bytes32 jobId, address provider, bytes32 result, bytes32 salt)
        external
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(jobId, provider, result, salt));
    }

    /// @inheritdoc IJobMarket
    function resultOf(bytes32 jobId, uint256 index) external view returns (bytes32) {
        return _results[jobId][index];
    }

    /// @inheritdoc IJobMarket
    function bounds() external view returns (uint32, uint32, uint32, uint32) {
        return (_minRun, _maxRun, _minWindow, _maxWindow);
    }

    /// @inheritdoc IJobMarket
    function token() external view returns (address) {
        return address(_token);
    }

    /// @inheritdoc IJobMarket
    function registry() external view returns (address) {
        return address(_registry);
    }

    /// @inheritdoc IJobMarket
    function maxReplicas() external pure returns (uint256) {
        return _MAX_REPLICAS;
    }

    // ------------------------------------------------------------------ internals

    /// @dev Check and record one reveal; returns the updated slot (not yet stored).
    function _reveal(
        bytes32 jobId,
        Job calldata job,
        JobSlot slot,
        uint256 n,
        uint256 index,
        address provider,
        bytes32 result,
        bytes32 salt
    ) private returns (JobSlot) {
        if (!slot.isCommitted(index)) revert MarketNotCommitted(index);
        if (slot.isRevealed(index)) revert MarketAlreadyRevealed(index);
        if (slot.committed() != (1 << n) - 1 && block.timestamp <= job.deadline) {
            revert MarketRevealNotOpen(job.deadline, block.timestamp);
        }
        uint256 revealEnd = uint256(job.deadline) + job.window;
        if (block.timestamp > revealEnd) revert MarketRevealClosed(revealEnd, block.timestamp);
        if (result == bytes32(0)) revert MarketZeroResult();
        if (keccak256(abi.encode(jobId, provider, result, salt)) != _results[jobId][index]) {
            revert MarketCommitmentMismatch(index);
        }
        _results[jobId][index] = result;
        emit ResultRevealed(jobId, provider, index, result);
        return slot.setRevealed(index);
    }

    /// @dev Store the slot, or settle when every committed result is revealed and no more can come.
    function _afterReveals(bytes32 jobId, Job calldata job, JobSlot slot, uint256 n) private {
        if (slot.allRevealed() && (slot.committed() == (1 << n) - 1 || block.timestamp > job.deadline)) {
            _settleMajority(jobId, job, slot, n);
        } else {
            _jobs[jobId] = slot;
        }
    }

    /// @dev Settle `job` if its deadlines allow; returns 0 when settled, else the first second it could be.
    function _tryFinalize(bytes32 jobId, Job calldata job, JobSlot slot) private returns (uint256 readyAt) {
        JobPhase phase = job.phase;
        if (phase == JobPhase.Submitted) {
            if (block.timestamp <= job.challengeEnd) return uint256(job.challengeEnd) + 1;
            _completeSingle(jobId, job);
            return 0;
        }
        if (block.timestamp <= job.deadline) {
            // Before the deadline only a replicated job with every result revealed can settle (reveal does
            // that itself), so there is nothing to do yet.
            return uint256(job.deadline) + 1;
        }
        if (phase == JobPhase.Open) {
            _closeOpen(jobId, job);
        } else if (phase == JobPhase.Assigned && job.replicas == 1) {
            _expireSingle(jobId, job);
        } else {
            (, uint256 n) = _participant(jobId, job, 0);
            uint256 revealEnd = uint256(job.deadline) + job.window;
            if (block.timestamp <= revealEnd && !slot.allRevealed()) return revealEnd + 1;
            _settleMajority(jobId, job, slot, n);
        }
        return 0;
    }

    function _closeOpen(bytes32 jobId, Job calldata job) private {
        _close(jobId);
        _update(job.requester, job.budget, true);
        emit JobSettled(jobId, Outcome.Cancelled, bytes32(0), 0, 0, job.budget, 0);
    }

    /// @dev k = 1 result accepted (explicitly or by an unchallenged window): pay the worker.
    function _completeSingle(bytes32 jobId, Job calldata job) private {
        _pay(jobId, job.workers[0], job.result);
    }

    function _pay(bytes32 jobId, Assignment calldata w, bytes32 result) private {
        _close(jobId);
        _update(w.provider, w.price, true);
        emit JobSettled(jobId, Outcome.Completed, result, 1, 0, 0, 0);
        IProviderRegistry.CollateralChange[] memory changes = new IProviderRegistry.CollateralChange[](1);
        changes[0] = IProviderRegistry.CollateralChange(w.provider, w.collateral, _rewardFor(w));
        _registry.settle(changes);
    }

    /// @dev k = 1 with no result by the deadline: refund the price, slash the collateral to the requester.
    function _expireSingle(bytes32 jobId, Job calldata job) private {
        Assignment calldata w = job.workers[0];
        _close(jobId);
        _update(job.requester, uint256(w.price) + w.collateral, true);
        emit JobSettled(jobId, Outcome.Expired, bytes32(0), 0, 1, w.price, w.collateral);
        IProviderRegistry.CollateralChange[] memory changes = new IProviderRegistry.CollateralChange[](1);
        changes[0] = IProviderRegistry.CollateralChange(w.provider, w.collateral, CollateralOutcome.Slash);
        _registry.settle(changes);
    }

    /// @dev Commit-reveal settlement over n participants: a strict majority of all n is paid; minority and
    /// missing participants are slashed to the requester; without a majority the requester gets all escrow back,
    /// except in a dispute, where the original result then stands (see below).
    function _settleMajority(bytes32 jobId, Job calldata job, JobSlot slot, uint256 n) private {
        bool disputed = job.phase == JobPhase.Disputed;
        uint256 revealed = slot.revealed();
        bytes32[] memory values = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            if (revealed & (1 << i) == 0) continue;
            values[i] = (disputed && i == 0) ? job.result : _results[jobId][i];
        }
        Tally memory t;
        (t.winner, t.hasWinner, t.paidMask) = MajorityTally.majority(values, revealed, n);
        // A dispute puts the burden of proof on the challenger: without a strict majority against it, the original
        // result stands and whoever revealed it is paid. Otherwise a requester could get work for free by
        // disputing with verifiers that never show up or that disagree with each other.
        bool originalStands = disputed && !t.hasWinner;
        if (originalStands) {
            t.winner = job.result;
            t.paidMask = MajorityTally.matching(values, revealed, n, job.result);
        }
        IProviderRegistry.CollateralChange[] memory changes = new IProviderRegistry.CollateralChange[](n);
        for (uint256 i = 0; i < n; ++i) {
            Assignment calldata a = (disputed && i > 0) ? job.verifiers[i - 1] : job.workers[disputed ? 0 : i];
            CollateralOutcome outcome;
            if (t.paidMask & (1 << i) != 0) {
                _update(a.provider, a.price, true);
                outcome = _rewardFor(a);
            } else {
                t.refund += a.price;
                if (revealed & (1 << i) == 0 || t.hasWinner) {
                    t.slashedMask |= 1 << i;
                    t.compensation += a.collateral;
                    outcome = CollateralOutcome.Slash;
                } else {
                    outcome = CollateralOutcome.Release;
                }
            }
            changes[i] = IProviderRegistry.CollateralChange(a.provider, a.collateral, outcome);
            if (!(disputed && i == 0) && slot.isCommitted(i)) delete _results[jobId][i];
        }
        _close(jobId);
        _update(job.requester, t.refund + t.compensation, true);
        emit JobSettled(
            jobId,
            (t.hasWinner || originalStands) ? Outcome.Completed : (revealed == 0 ? Outcome.Expired : Outcome.NoMajority),
            t.winner,
            t.paidMask,
            t.slashedMask,
            uint96(t.refund),
            uint96(t.compensation)
        );
        _registry.settle(changes);
    }

    /// @dev Participant `index` of a replicated or disputed job, and the number of participants.
    function _participant(bytes32 jobId, Job calldata job, uint256 index)
        private
        view
        returns (Assignment calldata a, uint256 n)
    {
        if (job.phase == JobPhase.Assigned && job.replicas >= 2) {
            n = job.workers.length;
            if (index >= n) revert MarketNotAssignedProvider(msg.sender, index);
            a = job.workers[index];
        } else if (job.phase == JobPhase.Disputed) {
            n = job.verifiers.length + 1;
            if (index >= n) revert MarketNotAssignedProvider(msg.sender, index);
            a = index == 0 ? job.workers[0] : job.verifiers[index - 1];
        } else {
            revert MarketWrongPhase(jobId, job.phase);
        }
    }

    /// @dev Verify and consume signed bids; lock each provider's collateral. `others` are providers already in
    /// the job (a dispute's verifiers must differ from its worker).
    function _takeBids(Terms memory terms, SignedBid[] calldata bids, Assignment[] memory others)
        private
        returns (Assignment[] memory out, uint96 total)
    {
        out = new Assignment[](bids.length);
        for (uint256 i = 0; i < bids.length; ++i) {
            Bid calldata b = bids[i].bid;
            address provider = b.provider;
            if (b.specHash != terms.specHash || b.requester != terms.requester) revert MarketBidMismatch(i, provider);
            if (provider == terms.requester) revert MarketSelfDealing(provider);
            if (b.expiry < block.timestamp) revert MarketBidExpired(provider, b.expiry, block.timestamp);
            if (terms.deadline < block.timestamp + b.runSeconds) {
                revert MarketDeadlineTooShort(provider, terms.deadline, block.timestamp + b.runSeconds);
            }
            if (b.maxDeadline != 0 && terms.deadline > b.maxDeadline) {
                revert MarketDeadlineTooLate(provider, terms.deadline, b.maxDeadline);
            }
            if (terms.window < b.minWindow) revert MarketWindowTooShort(provider, terms.window, b.minWindow);
            (address signer, ECDSA.RecoverError err,) =
                ECDSA.tryRecover(_bidDigest(b), bids[i].v, bids[i].r, bids[i].s);
            if (err != ECDSA.RecoverError.NoError || signer != provider) revert MarketBadBidSignature(provider, signer);
            if (!_useNonce(provider, b.nonce)) revert MarketBidNonceUsed(provider, b.nonce);
            for (uint256 j = 0; j < i; ++j) {
                if (out[j].provider == provider) revert MarketDuplicateProvider(provider);
            }
            for (uint256 j = 0; j < others.length; ++j) {
                if (others[j].provider == provider) revert MarketDuplicateProvider(provider);
            }
            _registry.lock(provider, b.collateral);
            out[i] = Assignment(provider, b.price, b.collateral);
            total += b.price;
        }
    }

    /// @dev Unpaid work earns no reputation, so a provider cannot farm jobsDone with free self-dealt jobs.
    function _rewardFor(Assignment calldata a) private pure returns (CollateralOutcome) {
        return a.price > 0 ? CollateralOutcome.Reward : CollateralOutcome.Release;
    }

    function _bidDigest(Bid calldata bid) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_BID_TYPEHASH, bid)));
    }

    function _checkTiming(uint64 deadline, uint32 window) private view {
        uint256 earliest = block.timestamp + _minRun;
        uint256 latest = block.timestamp + _maxRun;
        if (deadline < earliest || deadline > latest) revert MarketDeadlineOutOfBounds(deadline, earliest, latest);
        if (window < _minWindow || window > _maxWindow) revert MarketWindowOutOfBounds(window, _minWindow, _maxWindow);
    }

    /// @dev Read the job slot and check `job` is its current state.
    function _load(bytes32 jobId, Job calldata job) private view returns (JobSlot slot) {
        slot = _jobs[jobId];
        _check(jobId, slot, _hashCalldata(job));
    }

    /// @dev End a job's on-chain life: delete its slot (refund), or leave a tombstone when it settles in the block
    /// that opened it, so the same requester and salt cannot open the same id again in that block.
    function _close(bytes32 jobId) private {
        if (_jobs[jobId].openedIn() == uint32(block.number)) _jobs[jobId] = JobSlotLibrary.TOMBSTONE;
        else _jobs[jobId] = JobSlot.wrap(0);
    }

    /// @dev Check that `slot` is a live job whose hash is `jobHash`.
    function _check(bytes32 jobId, JobSlot slot, uint256 jobHash) private pure {
        if (!slot.isLive()) revert MarketUnknownJob(jobId);
        if (!slot.hashMatches(jobHash)) revert MarketJobMismatch(jobId);
    }

    /// @dev Overwrite head word `field` of abi.encode(job) (a dynamic tuple: one offset word, then the head).
    function _setField(bytes memory encoded, uint256 field, uint256 value) private pure {
        assembly ("memory-safe") {
            mstore(add(encoded, add(64, mul(field, 32))), value)
        }
    }

    function _onlyRequester(Job calldata job) private view {
        if (msg.sender != job.requester) revert MarketNotRequester(msg.sender, job.requester);
    }

    function _expectPhase(bytes32 jobId, Job calldata job, JobPhase phase) private pure {
        if (job.phase != phase) revert MarketWrongPhase(jobId, job.phase);
    }

    function _hashCalldata(Job calldata job) private pure returns (uint256) {
        return uint256(keccak256(abi.encode(job))) & JobSlotLibrary.HASH_MASK;
    }

    function _hashMemory(Job memory job) private pure returns (uint256) {
        return uint256(keccak256(abi.encode(job)));
    }

    function _escrowErrors() internal pure override returns (bytes4, bytes4, bytes4) {
        return (
            MarketInsufficientWithdrawable.selector,
            MarketInsufficientAllowance.selector,
            MarketInsufficientBalance.selector
        );
    }

    function _zeroAmountError() internal pure override returns (bytes4) {
        return MarketZeroAmount.selector;
    }
}
