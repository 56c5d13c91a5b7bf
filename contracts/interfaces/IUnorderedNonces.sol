// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Unordered nonces: a bitmap per account, so signed messages can be used in any order, each once.
/// @notice Nonce n is bit (n & 0xff) of word (n >> 8).
interface IUnorderedNonces {
    event NoncesCancelled(address indexed provider, uint256 wordPos, uint256 mask);

    /// @notice Provider: cancel every unused bid nonce whose bit is set in `mask`, in word `wordPos`.
    function cancelNonces(uint256 wordPos, uint256 mask) external;

    /// @notice Whether `nonce` of `provider` was used or cancelled.
    function isNonceUsed(address provider, uint256 nonce) external view returns (bool);
}
