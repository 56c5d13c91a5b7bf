// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice The one storage word of a live job (as Uniswap v4's Slot0 packs a pool's state), from the high bits:
/// the top 192 bits of keccak256(abi.encode(job)), the opening block number (32 bits), the committed bitmap
/// (16 bits) and the revealed bitmap (16 bits); bit i of a bitmap is participant i. Zero: no live job (never
/// opened, or settled and deleted). One (`TOMBSTONE`): settled in the block that opened it, kept so that the same
/// id cannot be opened again in that block.
type JobSlot is bytes32;

using JobSlotLibrary for JobSlot global;

/// @title JobSlotLibrary
/// @notice Getters and setters of a JobSlot; setters return the new value (the caller stores it).
library JobSlotLibrary {
    /// @dev Bits of the job hash in a slot (and in `IJobMarket.hashJob`).
    uint256 internal constant HASH_MASK = ~uint256(0) << 64;
    uint256 private constant _BLOCK_MASK = uint256(0xFFFFFFFF) << 32;
    uint256 private constant _BITMAP_MASK = 0xFFFF;
    JobSlot internal constant TOMBSTONE = JobSlot.wrap(bytes32(uint256(1)));

    /// @dev The slot of a job just opened in block `blockNumber`, whose full hash is `jobHash`.
    function open(uint256 jobHash, uint256 blockNumber) internal pure returns (JobSlot) {
        return JobSlot.wrap(bytes32((jobHash & HASH_MASK) | (uint256(uint32(blockNumber)) << 32)));
    }

    /// @dev A live job (neither empty nor a tombstone).
    function isLive(JobSlot self) internal pure returns (bool) {
        return uint256(JobSlot.unwrap(self)) > 1;
    }

    /// @dev Whether the slot commits to a job whose full hash is `jobHash`.
    function hashMatches(JobSlot self, uint256 jobHash) internal pure returns (bool) {
        return uint256(JobSlot.unwrap(self)) & HASH_MASK == jobHash & HASH_MASK;
    }

    /// @dev The number (low 32 bits) of the block that opened the job.
    function openedIn(JobSlot self) internal pure returns (uint32) {
        return uint32(uint256(JobSlot.unwrap(self)) >> 32);
    }

    /// @dev The same job (opening block) in a new state whose full hash is `jobHash`; both bitmaps cleared.
    function withHash(JobSlot self, uint256 jobHash) internal pure returns (JobSlot) {
        return JobSlot.wrap(bytes32((jobHash & HASH_MASK) | (uint256(JobSlot.unwrap(self)) & _BLOCK_MASK)));
    }

    /// @dev Bitmap of the participants that committed.
    function committed(JobSlot self) internal pure returns (uint256) {
        return (uint256(JobSlot.unwrap(self)) >> 16) & _BITMAP_MASK;
    }

    /// @dev Bitmap of the participants that revealed.
    function revealed(JobSlot self) internal pure returns (uint256) {
        return uint256(JobSlot.unwrap(self)) & _BITMAP_MASK;
    }

    function isCommitted(JobSlot self, uint256 index) internal pure returns (bool) {
        return (uint256(JobSlot.unwrap(self)) >> 16) & (1 << index) != 0;
    }

    function isRevealed(JobSlot self, uint256 index) internal pure returns (bool) {
        return uint256(JobSlot.unwrap(self)) & (1 << index) != 0;
    }

    function setCommitted(JobSlot self, uint256 index) internal pure returns (JobSlot) {
        return JobSlot.wrap(bytes32(uint256(JobSlot.unwrap(self)) | (1 << (index + 16))));
    }

    function setRevealed(JobSlot self, uint256 index) internal pure returns (JobSlot) {
        return JobSlot.wrap(bytes32(uint256(JobSlot.unwrap(self)) | (1 << index)));
    }

    /// @dev Every committed participant has revealed.
    function allRevealed(JobSlot self) internal pure returns (bool) {
        uint256 raw = uint256(JobSlot.unwrap(self));
        return raw & _BITMAP_MASK == (raw >> 16) & _BITMAP_MASK;
    }
}
