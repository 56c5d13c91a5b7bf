// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {CollateralOutcome} from "../types/MarketTypes.sol";

/// @title Provider registry: stake, per-job collateral and reputation of compute providers.
/// @notice Providers bond a stake (at least `minStake`), lock part of it as collateral for each job they take,
/// and leave through an unbonding delay. Only the market may lock, release or slash collateral.
interface IProviderRegistry {
    /// @notice One call's view of a provider.
    struct ProviderInfo {
        bool registered;
        uint96 stake;
        uint96 locked;
        uint96 unbonding;
        uint64 unbondingReadyAt;
        uint32 jobsDone;
        uint16 jobsFailed;
        uint16 timesSlashed;
        uint16 scoreBps;
        bytes32 metadataHash;
        bytes peerId;
    }

    /// @notice One provider's collateral decision in a settlement.
    struct CollateralChange {
        address provider;
        uint96 amount;
        CollateralOutcome outcome;
    }

    event ProviderRegistered(address indexed provider, uint96 stake, bytes peerId, bytes32 metadataHash);
    event ProfileUpdated(address indexed provider, bytes peerId, bytes32 metadataHash);
    event StakeAdded(address indexed provider, uint96 amount, uint96 stake);
    event UnstakeRequested(address indexed provider, uint96 amount, uint96 unbonding, uint64 readyAt);
    event StakeWithdrawn(address indexed provider, uint96 amount);
    event CollateralLocked(address indexed provider, uint96 amount);
    event CollateralReleased(address indexed provider, uint96 amount, CollateralOutcome outcome);

    /// @notice Only the market may lock, release or slash collateral.
    error RegistryUnauthorized(address caller);
    error RegistryZeroAddress();
    error RegistryAlreadyRegistered(address provider);
    error RegistryNotRegistered(address provider);
    /// @notice A stake (after this call) would be below the minimum fixed at deploy.
    error RegistryStakeBelowMinimum(uint256 stake, uint256 minStake);
    /// @notice Free stake (stake - locked collateral) does not cover `needed`.
    error RegistryInsufficientFreeStake(address provider, uint256 free, uint256 needed);
    error RegistryInsufficientAllowance(address owner, uint256 allowance, uint256 needed);
    error RegistryInsufficientBalance(address owner, uint256 balance, uint256 needed);
    error RegistryBadPeerId(uint256 length);
    error RegistryZeroAmount();
    error RegistryNothingUnbonding(address provider);
    error RegistryStillUnbonding(uint64 readyAt, uint256 now_);
    /// @notice Accounting bug guard: releasing more than is locked.
    error RegistryLockUnderflow(address provider, uint256 locked, uint256 amount);

    /// @notice Register as a provider, pulling `stake` tokens (approve the registry first).
    /// @param stake Initial stake, at least `minStake()`.
    /// @param peerId The libp2p peer id (multihash bytes) of the provider's node.
    /// @param metadataHash Hash of the provider's advert (capabilities, prices).
    function register(uint96 stake, bytes calldata peerId, bytes32 metadataHash) external;

    /// @notice Replace the peer id and metadata hash of a registered provider.
    function updateProfile(bytes calldata peerId, bytes32 metadataHash) external;

    /// @notice Pull `amount` more tokens into the caller's stake.
    function addStake(uint96 amount) external;

    /// @notice Move `amount` of free stake into unbonding; it can be withdrawn after `unbondingDelay()`.
    /// A later request adds to the amount and restarts the delay.
    function requestUnstake(uint96 amount) external;

    /// @notice Transfer the caller's unbonded stake back once its delay has passed.
    function withdrawStake() external;

    /// @notice Market only: lock `amount` of `provider`'s free stake as collateral for a job.
    function lock(address provider, uint96 amount) external;

    /// @notice Market only: release, reward or slash collateral for a settled job. Slashed tokens go to the
    /// market, which credits them to the requester.
    /// @return slashed Total amount transferred to the market.
    function settle(CollateralChange[] calldata changes) external returns (uint256 slashed);

    /// @notice Everything about `provider` in one call, including its reputation score.
    function providerInfo(address provider) external view returns (ProviderInfo memory);

    /// @notice Stake not locked as collateral (0 for unregistered providers).
    function freeStake(address provider) external view returns (uint256);

    /// @notice Reputation in one call. scoreBps = 10000 * (done + 1) / (done + failed + slashed + 2), a Beta(1,1)
    /// prior: a new provider scores 5000, a perfect record tends to 10000, each failure or slash pulls it down.
    function reputation(address provider)
        external
        view
        returns (uint32 jobsDone, uint16 jobsFailed, uint16 timesSlashed, uint16 scoreBps);

    function minStake() external view returns (uint96);

    function unbondingDelay() external view returns (uint64);

    function market() external view returns (address);

    function token() external view returns (address);
}
