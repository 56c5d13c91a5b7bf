// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Pull-payment escrow: market balances that accounts withdraw themselves.
/// @notice Every change of a balance emits exactly one event, so that for every account
/// balanceOf(account) == sum of its Deposited amounts - sum of its Withdrawn amounts.
interface IEscrow {
    /// @notice `amount` was added to `account`'s market balance: a deposit, or a payment, refund or compensation
    /// credited when a job is assigned or settled.
    event Deposited(address indexed account, uint256 amount);
    /// @notice `amount` was taken from `account`'s market balance: a withdrawal (the tokens were sent to
    /// `account`), or escrow of a job funded from the balance.
    event Withdrawn(address indexed account, uint256 amount);

    /// @notice Add tokens to the caller's market balance (used first to fund jobs).
    function deposit(uint256 amount) external;

    /// @notice Withdraw `amount` of the caller's market balance (earnings, refunds, compensation, deposits).
    function withdraw(uint256 amount) external;

    function balanceOf(address account) external view returns (uint256);
}
