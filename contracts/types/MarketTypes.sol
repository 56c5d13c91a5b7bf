// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Lifecycle phase of a job. A settled job keeps only a tombstone on-chain (see IJobMarket.jobSlot).
/// Open: escrow of `budget` locked, no provider yet. Assigned: providers chosen, results due by `deadline`.
/// Submitted: k = 1 result in, challenge window running. Disputed: k = 1 result under re-execution.
enum JobPhase {
    None,
    Open,
    Assigned,
    Submitted,
    Disputed
}

/// @notice How a job ended, reported in `JobSettled`.
/// Completed: a result was accepted (k = 1) or a strict majority agreed (k >= 2, or a dispute).
/// NoMajority: revealed results disagreed; the requester was refunded in full.
/// Expired: nobody delivered; collateral slashed to the requester, escrow refunded.
/// Cancelled: the requester withdrew an Open job, or an Open job outlived its deadline unassigned.
enum Outcome {
    Completed,
    NoMajority,
    Expired,
    Cancelled
}

/// @notice What the registry does with one provider's collateral when a job settles.
enum CollateralOutcome {
    Release, // unlock, reputation unchanged (no majority)
    Reward, // unlock, jobsDone + 1
    Slash // seize to the market (for the requester), jobsFailed + 1, timesSlashed + 1
}

/// @notice A provider's off-chain offer, signed with EIP-712 by `provider`.
/// `runSeconds` is the time the provider needs between assignment and its result: the job's deadline must
/// leave at least that. `minWindow` is the shortest challenge / reveal window the provider accepts (so a
/// requester cannot open a window too short to reveal in), and `maxDeadline` (0 = no bound) the latest result
/// deadline it accepts, which bounds how long its collateral can be locked. `nonce` is unordered (a per-provider
/// bitmap): each nonce is usable once, and a provider may cancel any set of them with `cancelNonces`.
struct Bid {
    bytes32 specHash;
    address requester;
    address provider;
    uint96 price;
    uint96 collateral;
    uint32 runSeconds;
    uint32 minWindow;
    uint64 maxDeadline;
    uint64 expiry;
    uint256 nonce;
}

/// @notice A bid with its secp256k1 signature (v, r, s) over the EIP-712 digest.
struct SignedBid {
    Bid bid;
    uint8 v;
    bytes32 r;
    bytes32 s;
}

/// @notice A participant's commitment, signed with EIP-712 (`Commit(bytes32 jobId,uint256 index,bytes32 commitment)`)
/// so that anyone (usually the requester) can post every commitment of a job in one transaction.
struct SignedCommit {
    uint256 index;
    bytes32 commitment;
    uint8 v;
    bytes32 r;
    bytes32 s;
}

/// @notice An opening of a commitment; anyone may post it, since the commitment binds the provider's address.
struct Reveal {
    uint256 index;
    bytes32 result;
    bytes32 salt;
}

/// @notice One provider's place in a job: what it is paid, and the collateral it has at stake.
struct Assignment {
    address provider;
    uint96 price;
    uint96 collateral;
}

/// @notice What the requester chooses when opening a job. The job id is
/// keccak256(abi.encode(requester, salt, block.number)), block.number being that of the block that opens it.
/// `window` is the challenge window (k = 1) or the reveal window after `deadline` (k >= 2 and disputes).
/// `budget` is escrowed only when the job opens without bids; `replicas` is k.
struct JobParams {
    bytes32 specHash;
    bytes32 salt;
    uint64 deadline;
    uint32 window;
    uint8 replicas;
    uint96 budget;
}

/// @notice The whole state of a live job. Only keccak256(abi.encode(job)) is stored (192 bits of it, next to the
/// opening block and the commit and reveal bitmaps: see JobSlot); every call passes the job back as calldata and
/// the market checks it against the stored hash. Off-chain code rebuilds it from the market's events (JobOpened, JobAssigned, ResultSubmitted,
/// JobDisputed). Storing one commitment instead of every field is what keeps a job under 200k gas.
struct Job {
    address requester;
    bytes32 specHash;
    uint64 deadline;
    uint32 window;
    uint8 replicas;
    JobPhase phase;
    uint96 budget;
    bytes32 result;
    uint64 challengeEnd;
    Assignment[] workers;
    Assignment[] verifiers;
}
