// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Lifecycle of a collaborative job. None: no such job. Open: escrow locked, rounds running (and, once
/// the deadline has passed, providers may claim with their receipts). Settled: the requester reported the counts
/// once; claims stay open, for providers holding higher receipts to top up, until claimWindow seconds after the
/// later of the settlement and the deadline. Closed: the unspent escrow went back to the requester; the id stays
/// taken forever, so a receipt can never be replayed on a new job.
enum CollabPhase {
    None,
    Open,
    Settled,
    Closed
}

/// @notice Everything the chain knows about one collaborative job (returned by `job`).
/// `escrow` = sum(prices) * rounds, locked at opening; `paid` = what providers have been credited so far;
/// `claimEnd` = last second of the claims once settled: max(settle time, deadline) + claimWindow (0 while
/// unsettled); `size` = number of providers.
struct CollabView {
    address requester;
    bytes32 specHash;
    uint32 rounds;
    uint64 deadline;
    uint32 claimWindow;
    uint64 claimEnd;
    CollabPhase phase;
    uint96 escrow;
    uint96 paid;
    bytes32 modelHash;
    uint8 size;
}

/// @title Collaborative training market: one training job split across m providers, paid per accepted
/// contribution (per provider per round), settled on-chain once per job.
/// @notice The requester opens a job naming its m providers and their per-contribution prices and locks
/// sum(prices) * rounds. Off-chain, after each round, it signs for every provider an EIP-712
/// `Receipt(bytes32 jobId,address provider,uint32 count)` with that provider's accepted contributions so far
/// (cumulative, so only the latest receipt matters: a payment channel per contributor). It then settles once
/// with every count; a provider paid less than its best receipt claims the difference during the claim window,
/// which never ends before deadline + claimWindow: settling early cannot cut short the claims of rounds worked
/// up to the deadline. If the requester vanishes, providers claim with their receipts after the deadline, and
/// `close` refunds the rest after deadline + claimWindow. Payments are pull-based (`withdraw`).
interface ICollabMarket {
    event CollabOpened(
        bytes32 indexed jobId,
        address indexed requester,
        bytes32 specHash,
        uint32 rounds,
        uint64 deadline,
        uint32 claimWindow,
        address[] providers,
        uint96[] prices,
        uint96 escrow
    );
    /// @notice `counts` are the requester's counts as given; a provider that had already claimed more keeps its
    /// higher count. `paid` is what this settle credited (not the job's total: see `job`).
    event CollabSettled(bytes32 indexed jobId, bytes32 modelHash, uint32[] counts, uint96 paid);
    /// @notice `count` is the provider's new recorded count; `amount` what this claim credited.
    event ContributionClaimed(bytes32 indexed jobId, address indexed provider, uint32 count, uint96 amount);
    /// @notice `refund` (escrow - paid) was credited to the requester's balance.
    event CollabClosed(bytes32 indexed jobId, uint96 refund);
    event Withdrawn(address indexed account, uint256 amount);

    error CollabZeroAddress();
    error CollabJobExists(bytes32 jobId);
    error CollabUnknownJob(bytes32 jobId);
    /// @notice Between 1 and 64 providers, one price each.
    error CollabBadProviderCount(uint256 providers, uint256 prices, uint256 maxProviders);
    error CollabZeroProvider(uint256 index);
    error CollabDuplicateProvider(address provider);
    error CollabZeroRounds();
    error CollabDeadlineOutOfBounds(uint64 deadline, uint256 earliest, uint256 latest);
    error CollabClaimWindowOutOfBounds(uint32 claimWindow, uint32 minClaimWindow, uint32 maxClaimWindow);
    /// @notice sum(prices) * rounds does not fit the 96-bit escrow.
    error CollabEscrowTooLarge(uint256 escrow);
    error CollabInsufficientAllowance(address owner, uint256 allowance, uint256 needed);
    error CollabInsufficientBalance(address owner, uint256 balance, uint256 needed);
    error CollabNotRequester(address caller, address requester);
    error CollabWrongPhase(bytes32 jobId, CollabPhase phase);
    /// @notice settle after deadline + claimWindow: the job can only be closed now.
    error CollabSettleClosed(uint256 settleEnd, uint256 now_);
    error CollabWrongCountLength(uint256 given, uint256 expected);
    error CollabCountTooHigh(uint256 index, uint32 count, uint32 rounds);
    error CollabBadIndex(uint256 index, uint256 size);
    error CollabBadReceiptSignature(address requester, address signer);
    /// @notice The receipt's count is not above what the provider was already credited for.
    error CollabNothingToClaim(uint256 index, uint32 count, uint32 recorded);
    /// @notice An unsettled job's claims open after its deadline.
    error CollabClaimNotOpen(uint256 opensAfter, uint256 now_);
    error CollabClaimClosed(uint256 claimEnd, uint256 now_);
    error CollabNotClosable(bytes32 jobId, uint256 readyAfter, uint256 now_);
    error CollabZeroAmount();
    error CollabInsufficientWithdrawable(address account, uint256 available, uint256 requested);

    /// @notice Open a job with `providers[i]` paid `prices[i]` per accepted contribution, for up to `rounds`
    /// rounds; locks sum(prices) * rounds from the caller's token allowance.
    /// @param deadline Chain time after which, if the requester has not settled, providers may claim.
    /// @param claimWindow How long claims stay open after the later of settle and the deadline (after the
    /// deadline when never settled).
    /// @return jobId keccak256(abi.encode(msg.sender, salt)): known before sending (see `jobIdFor`), so a
    /// requester that crashed mid-send can find out whether its job exists. Each (requester, salt) opens once.
    function openCollab(
        bytes32 specHash,
        bytes32 salt,
        uint32 rounds,
        uint64 deadline,
        uint32 claimWindow,
        address[] calldata providers,
        uint96[] calldata prices
    ) external returns (bytes32 jobId);

    /// @notice Requester only, once, while Open and no later than deadline + claimWindow: credit each provider
    /// counts[i] * prices[i] (less what it already claimed), record `modelHash` (the final aggregated model's
    /// blob id) and open the claims until claimEnd = max(now, deadline) + claimWindow. An early settle (even
    /// with zero counts) therefore leaves every receipt claimable until at least deadline + claimWindow, and
    /// the job closable only after that.
    function settle(bytes32 jobId, bytes32 modelHash, uint32[] calldata counts) external;

    /// @notice Anyone (a relayer is fine: the credit always goes to providers[index]): credit providers[index]
    /// for a requester-signed receipt whose count exceeds the recorded one. Open from settle until claimEnd
    /// (>= deadline + claimWindow), or, unsettled, after the deadline until deadline + claimWindow.
    function claim(bytes32 jobId, uint256 index, uint32 count, uint8 v, bytes32 r, bytes32 s) external;

    /// @notice Anyone, once the claims are over (after claimEnd, or after deadline + claimWindow when never
    /// settled; never before deadline + claimWindow either way): credit the unspent escrow to the requester and
    /// close the job.
    function close(bytes32 jobId) external;

    /// @notice Withdraw `amount` of the caller's balance (earnings and refunds) as tokens.
    function withdraw(uint256 amount) external;

    function balanceOf(address account) external view returns (uint256);

    function job(bytes32 jobId) external view returns (CollabView memory);

    /// @notice Providers, prices and recorded counts of a job, index-aligned.
    function participants(bytes32 jobId)
        external
        view
        returns (address[] memory providers, uint96[] memory prices, uint32[] memory counts);

    /// @notice The EIP-712 digest the requester signs for `Receipt(jobId, provider, count)`.
    function receiptDigest(bytes32 jobId, address provider, uint32 count) external view returns (bytes32);

    function jobIdFor(address requester, bytes32 salt) external pure returns (bytes32);

    function token() external view returns (address);

    /// @notice Fixed bounds: deadline within maxDuration of now; claimWindow in [minClaimWindow, maxClaimWindow];
    /// at most maxProviders providers.
    function bounds()
        external
        pure
        returns (uint32 minClaimWindow, uint32 maxClaimWindow, uint32 maxDuration, uint256 maxProviders);
}
