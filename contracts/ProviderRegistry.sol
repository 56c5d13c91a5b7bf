// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IProviderRegistry} from "./interfaces/IProviderRegistry.sol";
import {TokenPull} from "./libraries/TokenPull.sol";
import {CollateralOutcome} from "./types/MarketTypes.sol";

/// @title ProviderRegistry
/// @notice Stake, collateral and reputation of providers. Tokens stay here until withdrawn or slashed.
/// Invariant: token.balanceOf(this) == sum over providers of (stake + unbonding).
contract ProviderRegistry is IProviderRegistry, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @dev Hot state, one slot: read and written on every job.
    struct Account {
        uint96 stake; // bonded, collateral included
        uint96 locked; // collateral of running jobs
        uint32 jobsDone;
        uint16 jobsFailed;
        uint16 timesSlashed;
    }

    /// @dev Cold state: written at registration, profile updates and unstaking.
    struct Profile {
        bytes32 metadataHash;
        uint96 unbonding;
        uint64 unbondingReadyAt;
        bool registered;
        bytes peerId;
    }

    uint256 private constant _MAX_PEER_ID_BYTES = 128;

    IERC20 private immutable _token;
    uint96 private immutable _minStake;
    uint64 private immutable _unbondingDelay;
    address private immutable _market;

    mapping(address provider => Account) private _accounts;
    mapping(address provider => Profile) private _profiles;

    /// @param token_ The ERC-20 staked here (any ERC-20 works).
    /// @param minStake_ Minimum stake to register and to take jobs.
    /// @param unbondingDelay_ Seconds between `requestUnstake` and `withdrawStake`.
    /// @param market_ The JobMarket allowed to lock, release and slash collateral. It is deployed right after this
    /// registry, so its address is known in advance (CREATE address of the deployer's next nonce); an immutable
    /// saves a storage read on every job.
    constructor(IERC20 token_, uint96 minStake_, uint64 unbondingDelay_, address market_) {
        if (address(token_) == address(0) || market_ == address(0)) revert RegistryZeroAddress();
        if (minStake_ == 0) revert RegistryStakeBelowMinimum(0, 1);
        _token = token_;
        _minStake = minStake_;
        _unbondingDelay = unbondingDelay_;
        _market = market_;
    }

    modifier onlyMarket() {
        if (msg.sender != _market) revert RegistryUnauthorized(msg.sender);
        _;
    }

    /// @inheritdoc IProviderRegistry
    function register(uint96 stake, bytes calldata peerId, bytes32 metadataHash) external nonReentrant {
        Profile storage profile = _profiles[msg.sender];
        if (profile.registered) revert RegistryAlreadyRegistered(msg.sender);
        if (stake < _minStake) revert RegistryStakeBelowMinimum(stake, _minStake);
        _checkPeerId(peerId);
        profile.registered = true;
        profile.peerId = peerId;
        profile.metadataHash = metadataHash;
        _accounts[msg.sender].stake += stake;
        emit ProviderRegistered(msg.sender, stake, peerId, metadataHash);
        _pull(msg.sender, stake);
    }

    /// @inheritdoc IProviderRegistry
    function updateProfile(bytes calldata peerId, bytes32 metadataHash) external {
        Profile storage profile = _profiles[msg.sender];
        if (!profile.registered) revert RegistryNotRegistered(msg.sender);
        _checkPeerId(peerId);
        profile.peerId = peerId;
        profile.metadataHash = metadataHash;
        emit ProfileUpdated(msg.sender, peerId, metadataHash);
    }

    /// @inheritdoc IProviderRegistry
    function addStake(uint96 amount) external nonReentrant {
        if (!_profiles[msg.sender].registered) revert RegistryNotRegistered(msg.sender);
        if (amount == 0) revert RegistryZeroAmount();
        Account storage account = _accounts[msg.sender];
        uint96 stake = account.stake + amount;
        account.stake = stake;
        emit StakeAdded(msg.sender, amount, stake);
        _pull(msg.sender, amount);
    }

    /// @inheritdoc IProviderRegistry
    function requestUnstake(uint96 amount) external {
        Profile storage profile = _profiles[msg.sender];
        if (!profile.registered) revert RegistryNotRegistered(msg.sender);
        if (amount == 0) revert RegistryZeroAmount();
        Account storage account = _accounts[msg.sender];
        uint256 free = account.stake - account.locked;
        if (free < amount) revert RegistryInsufficientFreeStake(msg.sender, free, amount);
        account.stake -= amount;
        uint96 unbonding = profile.unbonding + amount;
        uint64 readyAt = uint64(block.timestamp) + _unbondingDelay;
        profile.unbonding = unbonding;
        profile.unbondingReadyAt = readyAt;
        emit UnstakeRequested(msg.sender, amount, unbonding, readyAt);
    }

    /// @inheritdoc IProviderRegistry
    function withdrawStake() external nonReentrant {
        Profile storage profile = _profiles[msg.sender];
        uint96 amount = profile.unbonding;
        if (amount == 0) revert RegistryNothingUnbonding(msg.sender);
        if (block.timestamp < profile.unbondingReadyAt) {
            revert RegistryStillUnbonding(profile.unbondingReadyAt, block.timestamp);
        }
        profile.unbonding = 0;
        emit StakeWithdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IProviderRegistry
    function lock(address provider, uint96 amount) external onlyMarket {
        Account storage account = _accounts[provider];
        (uint96 stake, uint96 locked) = (account.stake, account.locked);
        if (stake < _minStake) {
            // Only registered providers ever hold stake; the profile is read on this failure path alone.
            if (!_profiles[provider].registered) revert RegistryNotRegistered(provider);
            revert RegistryStakeBelowMinimum(stake, _minStake);
        }
        if (stake - locked < amount) revert RegistryInsufficientFreeStake(provider, stake - locked, amount);
        account.locked = locked + amount;
        emit CollateralLocked(provider, amount);
    }

    /// @inheritdoc IProviderRegistry
    function settle(CollateralChange[] calldata changes) external onlyMarket returns (uint256 slashed) {
        for (uint256 i = 0; i < changes.length; ++i) {
            CollateralChange calldata change = changes[i];
            Account storage account = _accounts[change.provider];
            Account memory a = account;
            if (a.locked < change.amount) revert RegistryLockUnderflow(change.provider, a.locked, change.amount);
            a.locked -= change.amount;
            if (change.outcome == CollateralOutcome.Reward) {
                if (a.jobsDone < type(uint32).max) ++a.jobsDone;
            } else if (change.outcome == CollateralOutcome.Slash) {
                a.stake -= change.amount;
                slashed += change.amount;
                if (a.jobsFailed < type(uint16).max) ++a.jobsFailed;
                if (change.amount > 0 && a.timesSlashed < type(uint16).max) ++a.timesSlashed;
            }
            account.stake = a.stake;
            account.locked = a.locked;
            account.jobsDone = a.jobsDone;
            account.jobsFailed = a.jobsFailed;
            account.timesSlashed = a.timesSlashed;
            emit CollateralReleased(change.provider, change.amount, change.outcome);
        }
        if (slashed > 0) _token.safeTransfer(msg.sender, slashed);
    }

    /// @inheritdoc IProviderRegistry
    function providerInfo(address provider) external view returns (ProviderInfo memory info) {
        Account memory a = _accounts[provider];
        Profile storage p = _profiles[provider];
        info = ProviderInfo({
            registered: p.registered,
            stake: a.stake,
            locked: a.locked,
            unbonding: p.unbonding,
            unbondingReadyAt: p.unbondingReadyAt,
            jobsDone: a.jobsDone,
            jobsFailed: a.jobsFailed,
            timesSlashed: a.timesSlashed,
            scoreBps: _score(a),
            metadataHash: p.metadataHash,
            peerId: p.peerId
        });
    }

    /// @inheritdoc IProviderRegistry
    function freeStake(address provider) external view returns (uint256) {
        Account memory a = _accounts[provider];
        return a.stake - a.locked;
    }

    /// @inheritdoc IProviderRegistry
    function reputation(address provider)
        external
        view
        returns (uint32 jobsDone, uint16 jobsFailed, uint16 timesSlashed, uint16 scoreBps)
    {
        Account memory a = _accounts[provider];
        return (a.jobsDone, a.jobsFailed, a.timesSlashed, _score(a));
    }

    /// @inheritdoc IProviderRegistry
    function minStake() external view returns (uint96) {
        return _minStake;
    }

    /// @inheritdoc IProviderRegistry
    function unbondingDelay() external view returns (uint64) {
        return _unbondingDelay;
    }

    /// @inheritdoc IProviderRegistry
    function market() external view returns (address) {
        return _market;
    }

    /// @inheritdoc IProviderRegistry
    function token() external view returns (address) {
        return address(_token);
    }

    function _score(Account memory a) private pure returns (uint16) {
        uint256 total = uint256(a.jobsDone) + a.jobsFailed + a.timesSlashed + 2;
        return uint16((10_000 * (uint256(a.jobsDone) + 1)) / total);
    }

    function _checkPeerId(bytes calldata peerId) private pure {
        if (peerId.length == 0 || peerId.length > _MAX_PEER_ID_BYTES) revert RegistryBadPeerId(peerId.length);
    }

    /// @dev Pull `amount` tokens from `owner`, failing with the amounts instead of the token's own revert.
    function _pull(address owner, uint256 amount) private {
        TokenPull.pull(
            _token, owner, amount, RegistryInsufficientAllowance.selector, RegistryInsufficientBalance.selector
        );
    }
}
