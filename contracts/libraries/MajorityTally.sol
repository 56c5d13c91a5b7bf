// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title MajorityTally
/// @notice Counting of commit-reveal results: `values[i]` is what participant i revealed, and bit i of
/// `revealed` says whether it revealed at all (unrevealed entries are ignored). Participants are 0 .. n - 1.
library MajorityTally {
    /// @dev The value revealed by more than half of all n participants (revealed or not), if any, and the bitmap
    /// of those who revealed it.
    function majority(bytes32[] memory values, uint256 revealed, uint256 n)
        internal
        pure
        returns (bytes32 winner, bool found, uint256 mask)
    {
        for (uint256 i = 0; i < n; ++i) {
            if (revealed & (1 << i) == 0) continue;
            uint256 m;
            uint256 count;
            for (uint256 j = 0; j < n; ++j) {
                if (revealed & (1 << j) != 0 && values[j] == values[i]) {
                    m |= 1 << j;
                    ++count;
                }
            }
            if (2 * count > n) return (values[i], true, m);
        }
    }

    /// @dev Bitmap of the participants that revealed `value`.
    function matching(bytes32[] memory values, uint256 revealed, uint256 n, bytes32 value)
        internal
        pure
        returns (uint256 mask)
    {
        for (uint256 i = 0; i < n; ++i) {
            if (revealed & (1 << i) != 0 && values[i] == value) mask |= 1 << i;
        }
    }
}
