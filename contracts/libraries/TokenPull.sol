// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {CustomRevert} from "./CustomRevert.sol";

/// @title TokenPull
/// @notice Pull tokens into this contract with `transferFrom`, failing with the amounts instead of the token's
/// own revert: `lowAllowance(owner, allowance, amount)` or `lowBalance(owner, balance, amount)`, custom errors of
/// the calling contract given by selector. Every contract that takes tokens from its users uses this one path.
library TokenPull {
    using SafeERC20 for IERC20;

    /// @dev Transfer `amount` of `token` from `owner` to this contract. When the transfer fails, the cause is
    /// looked up (allowance first, then balance) and reported with the caller's error; a failure with enough of
    /// both is re-run so that it reverts with the token's own reason.
    function pull(IERC20 token, address owner, uint256 amount, bytes4 lowAllowance, bytes4 lowBalance) internal {
        if (token.trySafeTransferFrom(owner, address(this), amount)) return;
        uint256 allowance = token.allowance(owner, address(this));
        if (allowance < amount) CustomRevert.revertWith(lowAllowance, owner, allowance, amount);
        uint256 balance = token.balanceOf(owner);
        if (balance < amount) CustomRevert.revertWith(lowBalance, owner, balance, amount);
        token.safeTransferFrom(owner, address(this), amount); // reverts with the token's own reason
    }
}
