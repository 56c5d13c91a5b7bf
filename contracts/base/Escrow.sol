// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IEscrow} from "../interfaces/IEscrow.sol";
import {CustomRevert} from "../libraries/CustomRevert.sol";
import {TokenPull} from "../libraries/TokenPull.sol";

/// @title Escrow
/// @notice Pull-payment escrow of one ERC-20: market balances credited by the contract and withdrawn by their
/// owners, deposits, and the one way tokens are pulled in. Every balance change goes through `_update`, which
/// emits the event (as ERC20._update does for a token).
/// @dev The inheriting contract names its own custom errors in `_escrowErrors`.
abstract contract Escrow is IEscrow, ReentrancyGuard {
    using SafeERC20 for IERC20;

    IERC20 internal immutable _token;
    mapping(address account => uint256) private _balances;

    constructor(IERC20 token_) {
        _token = token_;
    }

    /// @inheritdoc IEscrow
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) CustomRevert.revertWith(_zeroAmountError());
        _update(msg.sender, amount, true);
        _pull(msg.sender, amount);
    }

    /// @inheritdoc IEscrow
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) CustomRevert.revertWith(_zeroAmountError());
        uint256 available = _balances[msg.sender];
        if (available < amount) {
            (bytes4 lowWithdrawable,,) = _escrowErrors();
            CustomRevert.revertWith(lowWithdrawable, msg.sender, available, amount);
        }
        _update(msg.sender, amount, false);
        _token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IEscrow
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account];
    }

    /// @dev Selectors of the inheriting contract's errors, each shaped (address account, uint256 have,
    /// uint256 needed): withdrawal above the balance, allowance too low for a pull, token balance too low for it.
    function _escrowErrors()
        internal
        pure
        virtual
        returns (bytes4 lowWithdrawable, bytes4 lowAllowance, bytes4 lowBalance);

    /// @dev Selector of the inheriting contract's error (no arguments) for a zero deposit or withdrawal.
    function _zeroAmountError() internal pure virtual returns (bytes4);

    /// @dev The one function that changes a balance: add `amount` to `account`'s balance (`credit`) or subtract
    /// it (checked), and emit Deposited or Withdrawn. A zero amount changes nothing and emits nothing.
    function _update(address account, uint256 amount, bool credit) internal {
        if (amount == 0) return;
        if (credit) {
            _balances[account] += amount;
            emit Deposited(account, amount);
        } else {
            _balances[account] -= amount;
            emit Withdrawn(account, amount);
        }
    }

    /// @dev Take up to `amount` from `owner`'s balance (to fund escrow); returns what was taken.
    function _useBalance(address owner, uint96 amount) internal returns (uint96 taken) {
        uint256 available = _balances[owner];
        if (available == 0) return 0;
        taken = available < amount ? uint96(available) : amount;
        _update(owner, taken, false);
    }

    /// @dev Pull `amount` tokens from `owner` into escrow (nothing for zero), failing with the amounts.
    function _pull(address owner, uint256 amount) internal {
        if (amount == 0) return;
        (, bytes4 lowAllowance, bytes4 lowBalance) = _escrowErrors();
        TokenPull.pull(_token, owner, amount, lowAllowance, lowBalance);
    }
}
