// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {CollabPhase, CollabView, ICollabMarket} from "./interfaces/ICollabMarket.sol";
import {TokenPull} from "./libraries/TokenPull.sol";

/// @title CollabMarket
/// @notice Escrow and once-per-job settlement of collaborative training jobs (see ICollabMarket).
/// Invariant: token.balanceOf(this) == sum of balances + sum over Open and Settled jobs of (escrow - paid).
/// @dev Separate from JobMarket because nothing here is verified by replication: the requester is the judge of
/// each contribution (it aggregates the updates itself) and its signed cumulative receipts are the only proof a
/// provider needs, so there is no collateral, registry or commit-reveal to share.
contract CollabMarket is ICollabMarket, EIP712, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 private constant _RECEIPT_TYPEHASH = keccak256("Receipt(bytes32 jobId,address provider,uint32 count)");
    /// @dev A claim window must leave a provider time to notice a short settlement and send one transaction,
    /// even on a congested chain: one minute at least, a month at most (the refund waits for it).
    uint32 private constant _MIN_CLAIM_WINDOW = 60;
    uint32 private constant _MAX_CLAIM_WINDOW = 30 days;
    /// @dev Longest time from opening to deadline: bounds how long escrow can be locked (and keeps deadlines in
    /// the 40 bits they are stored in).
    uint32 private constant _MAX_DURATION = 365 days;
    /// @dev Counts are packed 8 per storage word; 64 providers is 8 words, which bounds settle's gas.
    uint256 private constant _MAX_PROVIDERS = 64;

    /// @dev Four storage words per job. Phase Closed keeps the record, so a job id (and every receipt signed for
    /// it) can never be used again.
    struct Collab {
        address requester;
        uint40 deadline;
        uint40 claimEnd;
        CollabPhase phase;
        uint8 size;
        uint96 escrow;
        uint96 paid;
        uint32 rounds;
        uint32 claimWindow;
        bytes32 specHash;
        bytes32 modelHash;
    }

    IERC20 private immutable _token;

    mapping(bytes32 jobId => Collab) private _collabs;
    /// @dev Seat i: provider address (low 160 bits) | price << 160.
    mapping(bytes32 jobId => mapping(uint256 index => uint256)) private _seats;
    /// @dev Recorded counts, 8 uint32 per word: count of seat i at bits 32 * (i % 8) of word i / 8.
    mapping(bytes32 jobId => mapping(uint256 word => uint256)) private _counts;
    mapping(address account => uint256) private _balances;

    /// @param token_ Payment token (any ERC-20; the same one as the JobMarket's in a deployment).
    constructor(IERC20 token_) EIP712("AgoraCollab", "1") {
        if (address(token_) == address(0)) revert CollabZeroAddress();
        _token = token_;
    }

    // ------------------------------------------------------------------ requester

    /// @inheritdoc ICollabMarket
    function openCollab(
        bytes32 specHash,
        bytes32 salt,
        uint32 rounds,
        uint64 deadline,
        uint32 claimWindow,
        address[] calldata providers,
        uint96[] calldata prices
    ) external nonReentrant returns (bytes32 jobId) {
        jobId = keccak256(abi.encode(msg.sender, salt));
        if (_collabs[jobId].phase != CollabPhase.None) revert CollabJobExists(jobId);
        _checkTerms(providers.length, prices.length, rounds, deadline, claimWindow);
        uint256 escrow = _storeSeats(jobId, providers, prices) * rounds;
        if (escrow > type(uint96).max) revert CollabEscrowTooLarge(escrow);
        Collab storage c = _collabs[jobId];
        (c.requester, c.deadline, c.phase) = (msg.sender, uint40(deadline), CollabPhase.Open);
        c.size = uint8(providers.length);
        (c.escrow, c.rounds, c.claimWindow) = (uint96(escrow), rounds, claimWindow);
        c.specHash = specHash;
        _emitOpened(jobId, providers, prices);
        _pull(msg.sender, escrow);
    }

    /// @inheritdoc ICollabMarket
    function settle(bytes32 jobId, bytes32 modelHash, uint32[] calldata counts) external {
        Collab storage c = _collabs[jobId];
        (address requester, CollabPhase phase, uint256 n) = (c.requester, c.phase, c.size);
        if (phase == CollabPhase.None) revert CollabUnknownJob(jobId);
        if (msg.sender != requester) revert CollabNotRequester(msg.sender, requester);
        if (phase != CollabPhase.Open) revert CollabWrongPhase(jobId, phase);
        uint32 window = c.claimWindow;
        uint256 settleEnd = uint256(c.deadline) + window;
        if (block.timestamp > settleEnd) revert CollabSettleClosed(settleEnd, block.timestamp);
        if (counts.length != n) revert CollabWrongCountLength(counts.length, n);
        uint256 paid = _creditCounts(jobId, counts, c.rounds);
        c.phase = CollabPhase.Settled;
        // Never before deadline + window: a settle long before the deadline must not let the requester close
        // (and take the escrow back) while providers are still working rounds it may yet sign receipts for.
        uint256 claimEnd = block.timestamp + window;
        if (claimEnd < settleEnd) claimEnd = settleEnd;
        c.claimEnd = uint40(claimEnd);
        c.paid += uint96(paid); // paid + earlier claims <= escrow: every count <= rounds
        c.modelHash = modelHash;
        emit CollabSettled(jobId, modelHash, counts, uint96(paid));
    }

    // ------------------------------------------------------------------ providers (or their relayers)

    /// @inheritdoc ICollabMarket
    function claim(bytes32 jobId, uint256 index, uint32 count, uint8 v, bytes32 r, bytes32 s) external {
        Collab storage c = _collabs[jobId];
        _checkClaimOpen(jobId, c);
        if (index >= c.size) revert CollabBadIndex(index, c.size);
        if (count > c.rounds) revert CollabCountTooHigh(index, count, c.rounds);
        uint256 seat = _seats[jobId][index];
        address provider = address(uint160(seat));
        (address signer,,) = ECDSA.tryRecover(_receiptDigest(jobId, provider, count), v, r, s);
        if (signer != c.requester) revert CollabBadReceiptSignature(c.requester, signer);
        uint96 amount = _raiseCount(jobId, index, count) * uint96(seat >> 160);
        c.paid += amount;
        _balances[provider] += amount;
        emit ContributionClaimed(jobId, provider, count, amount);
    }

    // ------------------------------------------------------------------ anyone

    /// @inheritdoc ICollabMarket
    function close(bytes32 jobId) external {
        Collab storage c = _collabs[jobId];
        CollabPhase phase = c.phase;
        if (phase == CollabPhase.None) revert CollabUnknownJob(jobId);
        if (phase == CollabPhase.Closed) revert CollabWrongPhase(jobId, phase);
        uint256 readyAfter = phase == CollabPhase.Settled ? c.claimEnd : uint256(c.deadline) + c.claimWindow;
        if (block.timestamp <= readyAfter) revert CollabNotClosable(jobId, readyAfter, block.timestamp);
        uint96 refund = c.escrow - c.paid;
        c.phase = CollabPhase.Closed;
        _balances[c.requester] += refund;
        emit CollabClosed(jobId, refund);
    }

    /// @inheritdoc ICollabMarket
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert CollabZeroAmount();
        uint256 available = _balances[msg.sender];
        if (available < amount) revert CollabInsufficientWithdrawable(msg.sender, available, amount);
        _balances[msg.sender] = available - amount;
        emit Withdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc ICollabMarket
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account];
    }

    /// @inheritdoc ICollabMarket
    function job(bytes32 jobId) external view returns (CollabView memory out) {
        Collab storage c = _collabs[jobId];
        out.requester = c.requester;
        out.specHash = c.specHash;
        out.rounds = c.rounds;
        out.deadline = c.deadline;
        out.claimWindow = c.claimWindow;
        out.claimEnd = c.claimEnd;
        out.phase = c.phase;
        out.escrow = c.escrow;
        out.paid = c.paid;
        out.modelHash = c.modelHash;
        out.size = c.size;
    }

    /// @inheritdoc ICollabMarket
    function participants(bytes32 jobId)
        external
        view
        returns (address[] memory providers, uint96[] memory prices, uint32[] memory counts)
    {
        uint256 n = _collabs[jobId].size;
        providers = new address[](n);
        prices = new uint96[](n);
        counts = new uint32[](n);
        for (uint256 i = 0; i < n; ++i) {
            uint256 seat = _seats[jobId][i];
            providers[i] = address(uint160(seat));
            prices[i] = uint96(seat >> 160);
            counts[i] = uint32(_counts[jobId][i >> 3] >> ((i & 7) << 5));
        }
    }

    /// @inheritdoc ICollabMarket
    function receiptDigest(bytes32 jobId, address provider, uint32 count) external view returns (bytes32) {
        return _receiptDigest(jobId, provider, count);
    }

    /// @inheritdoc ICollabMarket
    function jobIdFor(address requester, bytes32 salt) external pure returns (bytes32) {
        return keccak256(abi.encode(requester, salt));
    }

    /// @inheritdoc ICollabMarket
    function token() external view returns (address) {
        return address(_token);
    }

    /// @inheritdoc ICollabMarket
    function bounds()
        external
        pure
        returns (uint32 minClaimWindow, uint32 maxClaimWindow, uint32 maxDuration, uint256 maxProviders)
    {
        return (_MIN_CLAIM_WINDOW, _MAX_CLAIM_WINDOW, _MAX_DURATION, _MAX_PROVIDERS);
    }

    // ------------------------------------------------------------------ internals

    /// @dev Check and store the seats; returns sum(prices). Duplicates are found with a 256-bit filter on the
    /// address's low byte, so the usual case is one pass; only a filter hit scans the earlier seats.
    function _storeSeats(bytes32 jobId, address[] calldata providers, uint96[] calldata prices)
        private
        returns (uint256 perRound)
    {
        uint256 seen;
        for (uint256 i = 0; i < providers.length; ++i) {
            address p = providers[i];
            if (p == address(0)) revert CollabZeroProvider(i);
            uint256 bit = 1 << (uint160(p) & 0xff);
            if (seen & bit != 0) {
                for (uint256 j = 0; j < i; ++j) {
                    if (providers[j] == p) revert CollabDuplicateProvider(p);
                }
            }
            seen |= bit;
            uint96 price = prices[i];
            _seats[jobId][i] = uint256(uint160(p)) | (uint256(price) << 160);
            perRound += price;
        }
    }

    function _checkTerms(uint256 n, uint256 nPrices, uint32 rounds, uint64 deadline, uint32 claimWindow)
        private
        view
    {
        if (n == 0 || n > _MAX_PROVIDERS || nPrices != n) revert CollabBadProviderCount(n, nPrices, _MAX_PROVIDERS);
        if (rounds == 0) revert CollabZeroRounds();
        uint256 latest = block.timestamp + _MAX_DURATION;
        if (deadline <= block.timestamp || deadline > latest) {
            revert CollabDeadlineOutOfBounds(deadline, block.timestamp + 1, latest);
        }
        if (claimWindow < _MIN_CLAIM_WINDOW || claimWindow > _MAX_CLAIM_WINDOW) {
            revert CollabClaimWindowOutOfBounds(claimWindow, _MIN_CLAIM_WINDOW, _MAX_CLAIM_WINDOW);
        }
    }

    /// @dev Emitted from the stored record: openCollab's own arguments leave no stack room for the event.
    function _emitOpened(bytes32 jobId, address[] calldata providers, uint96[] calldata prices) private {
        Collab storage c = _collabs[jobId];
        emit CollabOpened(
            jobId, c.requester, c.specHash, c.rounds, c.deadline, c.claimWindow, providers, prices, c.escrow
        );
    }

    /// @dev Raise each seat's recorded count to counts[i] and credit the rise at the seat's price; returns the
    /// total credited. One read and one write per word of 8 counts, one balance write per provider paid: this
    /// loop is settle's whole cost.
    function _creditCounts(bytes32 jobId, uint32[] calldata counts, uint32 rounds) private returns (uint256 paid) {
        uint256 n = counts.length;
        for (uint256 w = 0; w < n; w += 8) {
            uint256 word = _counts[jobId][w >> 3];
            uint256 next = word;
            uint256 end = w + 8 < n ? w + 8 : n;
            for (uint256 i = w; i < end; ++i) {
                uint32 count = counts[i];
                if (count > rounds) revert CollabCountTooHigh(i, count, rounds);
                uint256 shift = (i & 7) << 5;
                uint256 recorded = uint32(word >> shift);
                if (count <= recorded) continue; // already claimed at least this much
                paid += _credit(jobId, i, count - recorded);
                next = (next & ~(uint256(0xFFFFFFFF) << shift)) | (uint256(count) << shift);
            }
            if (next != word) _counts[jobId][w >> 3] = next;
        }
    }

    /// @dev Credit seat `index` for `rise` more contributions; returns the amount.
    function _credit(bytes32 jobId, uint256 index, uint256 rise) private returns (uint256 amount) {
        uint256 seat = _seats[jobId][index];
        amount = rise * (seat >> 160);
        _balances[address(uint160(seat))] += amount;
    }

    /// @dev Claims are open from settle until claimEnd (never before deadline + claimWindow), or for an
    /// unsettled job from the deadline (exclusive) until deadline + claimWindow; reverts otherwise.
    function _checkClaimOpen(bytes32 jobId, Collab storage c) private view {
        CollabPhase phase = c.phase;
        if (phase == CollabPhase.None) revert CollabUnknownJob(jobId);
        if (phase == CollabPhase.Closed) revert CollabWrongPhase(jobId, phase);
        if (phase == CollabPhase.Settled) {
            if (block.timestamp > c.claimEnd) revert CollabClaimClosed(c.claimEnd, block.timestamp);
            return;
        }
        uint256 deadline = c.deadline;
        if (block.timestamp <= deadline) revert CollabClaimNotOpen(deadline, block.timestamp);
        uint256 end = deadline + c.claimWindow;
        if (block.timestamp > end) revert CollabClaimClosed(end, block.timestamp);
    }

    /// @dev Record `count` for seat `index`; returns by how much it rose. Reverts NothingToClaim unless it rose.
    function _raiseCount(bytes32 jobId, uint256 index, uint32 count) private returns (uint32 rise) {
        uint256 word = _counts[jobId][index >> 3];
        uint256 shift = (index & 7) << 5;
        uint32 recorded = uint32(word >> shift);
        if (count <= recorded) revert CollabNothingToClaim(index, count, recorded);
        _counts[jobId][index >> 3] = (word & ~(uint256(0xFFFFFFFF) << shift)) | (uint256(count) << shift);
        return count - recorded;
    }

    function _receiptDigest(bytes32 jobId, address provider, uint32 count) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_RECEIPT_TYPEHASH, jobId, provider, count)));
    }

    /// @dev Pull `amount` tokens from `owner`, failing with the amounts instead of the token's own revert.
    function _pull(address owner, uint256 amount) private {
        if (amount == 0) return;
        TokenPull.pull(_token, owner, amount, CollabInsufficientAllowance.selector, CollabInsufficientBalance.selector);
    }
}
