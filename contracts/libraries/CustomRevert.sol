// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title CustomRevert
/// @notice Revert with a custom error given by its selector, so that shared code (libraries, base contracts) can
/// fail with the error of the contract using it. Only for errors whose arguments are all static words.
library CustomRevert {
    /// @dev Revert with `selector()`.
    function revertWith(bytes4 selector) internal pure {
        assembly ("memory-safe") {
            mstore(0, selector)
            revert(0, 4)
        }
    }

    /// @dev Revert with `selector(account, have, needed)`, the shape of every "insufficient X" error.
    function revertWith(bytes4 selector, address account, uint256 have, uint256 needed) internal pure {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, selector)
            mstore(add(p, 0x04), and(account, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(p, 0x24), have)
            mstore(add(p, 0x44), needed)
            revert(p, 0x64)
        }
    }
}
