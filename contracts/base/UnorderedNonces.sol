// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IUnorderedNonces} from "../interfaces/IUnorderedNonces.sol";

/// @title UnorderedNonces
/// @notice Per-account bitmap nonces (as Permit2's): 256 nonces per storage word, usable in any order, each once;
/// an account may cancel any set of its unused nonces.
abstract contract UnorderedNonces is IUnorderedNonces {
    mapping(address owner => mapping(uint256 wordPos => uint256)) private _nonces;

    /// @inheritdoc IUnorderedNonces
    function cancelNonces(uint256 wordPos, uint256 mask) external {
        _nonces[msg.sender][wordPos] |= mask;
        emit NoncesCancelled(msg.sender, wordPos, mask);
    }

    /// @inheritdoc IUnorderedNonces
    function isNonceUsed(address provider, uint256 nonce) external view returns (bool) {
        return _nonces[provider][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    /// @dev Mark `nonce` of `owner` used; returns false (and changes nothing) if it already was, or was cancelled.
    function _useNonce(address owner, uint256 nonce) internal returns (bool fresh) {
        uint256 bit = 1 << (nonce & 0xff);
        uint256 word = _nonces[owner][nonce >> 8];
        if (word & bit != 0) return false;
        _nonces[owner][nonce >> 8] = word | bit;
        return true;
    }
}
