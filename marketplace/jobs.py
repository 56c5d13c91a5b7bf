"""Rebuild a job's full state from the market's events (the chain stores only its hash)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3

from marketplace.errors import AgoraError, JobNotFoundError
from marketplace.types import HASH_MASK, TOMBSTONE_SLOT, Assignment, Job, JobPhase, Outcome

#: The most blocks one eth_getLogs asks for (public RPC endpoints refuse ranges past 1,000-10,000 blocks).
LOG_CHUNK = 2_000
#: Where the opening block sits in a live job slot: hash192 | opening block32 | committed16 | revealed16.
OPEN_BLOCK_SHIFT = 32


@dataclass
class JobView:
    """Everything known about one job: its current struct, commit/reveal progress and history."""

    job_id: bytes
    job: Job | None
    settled: bool = False
    outcome: Outcome | None = None
    settlement: dict[str, Any] = field(default_factory=dict)
    committed_mask: int = 0
    revealed_mask: int = 0
    commitments: dict[int, bytes] = field(default_factory=dict)
    reveals: dict[int, bytes] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.settled:
            return f"settled:{self.outcome.name.lower()}" if self.outcome is not None else "settled"
        assert self.job is not None
        return self.job.phase.name.lower()


def _assignments(items: Any) -> tuple[Assignment, ...]:
    return tuple(Assignment.from_abi(a) for a in items)


class JobIndex:
    """Decodes the market's logs for one job id."""

    def __init__(self, market: Any, from_block: int) -> None:
        self.market = market
        self.from_block = from_block
        self._events = {}
        for item in market.abi:
            if item.get("type") == "event":
                topic = "0x" + event_abi_to_log_topic(item).hex()
                self._events[topic] = getattr(market.events, item["name"])()

    def logs(self, job_id: bytes, to_block: int | str = "latest", *, from_block: int | None = None) -> list[Any]:
        """The job's decoded logs, oldest first, read in chunks of at most LOG_CHUNK blocks (public RPCs cap the
        range of one eth_getLogs) from `from_block` (default: the deployment's block)."""
        w3 = self.market.w3
        end = int(w3.eth.block_number) if to_block == "latest" else int(to_block)
        start = self.from_block if from_block is None else max(self.from_block, from_block)
        raw: list[Any] = []
        while start <= end:
            stop = min(end, start + LOG_CHUNK - 1)
            raw.extend(w3.eth.get_logs({"address": self.market.address, "fromBlock": start, "toBlock": stop,
                                        "topics": [None, Web3.to_hex(job_id)]}))
            start = stop + 1
        decoded = []
        for log in sorted(raw, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
            event = self._events.get(Web3.to_hex(log["topics"][0]))
            if event is not None:
                decoded.append(event.process_log(log))
        return decoded

    def view(self, job_id: bytes) -> JobView:
        """Replay the job's events. Raises JobNotFoundError when none exist.

        Logs and the job slot are read at ONE block: a transaction mined between two "latest" reads (say, the
        reveal that settles the job) would otherwise show a cleared slot without its JobSettled event."""
        block = int(self.market.w3.eth.block_number)
        slot = int(self.market.functions.jobSlot(job_id).call(block_identifier=block))
        # A live job's slot holds its opening block: its logs start there (one short range, not the chain's life).
        opened = (slot >> OPEN_BLOCK_SHIFT) & 0xFFFFFFFF if slot not in (0, TOMBSTONE_SLOT) else None
        logs = self.logs(job_id, block, from_block=opened)
        if not logs:
            raise JobNotFoundError(f"no job {Web3.to_hex(job_id)} on market {self.market.address}")
        v = JobView(job_id=job_id, job=None)
        job: Job | None = None
        for log in logs:
            name, a = log["event"], log["args"]
            v.history.append({"event": name, "block": log["blockNumber"], "tx": Web3.to_hex(log["transactionHash"]),
                              "args": dict(a)})
            if name == "JobOpened":
                # A new lifecycle under this id (only possible for a job settled in its opening block, which the
                # market then blocks): start over, never mix two lifecycles.
                v = JobView(job_id=job_id, job=None, history=v.history)
                job = Job(requester=a["requester"], spec_hash=bytes(a["specHash"]), deadline=a["deadline"],
                          window=a["window"], replicas=a["replicas"], phase=JobPhase.OPEN, budget=a["escrow"])
                if a["workers"]:
                    job = job.evolve(phase=JobPhase.ASSIGNED, budget=0, workers=_assignments(a["workers"]))
            elif job is None:
                continue
            elif name == "JobAssigned":
                job = job.evolve(phase=JobPhase.ASSIGNED, budget=0, workers=_assignments(a["workers"]))
            elif name == "ResultSubmitted":
                job = job.evolve(phase=JobPhase.SUBMITTED, result=bytes(a["result"]),
                                 challenge_end=a["challengeEnd"])
            elif name == "JobDisputed":
                job = job.evolve(phase=JobPhase.DISPUTED, deadline=a["deadline"],
                                 verifiers=_assignments(a["verifiers"]))
                v.committed_mask = v.revealed_mask = 1
            elif name == "ResultCommitted":
                v.committed_mask |= 1 << a["index"]
                v.commitments[a["index"]] = bytes(a["commitment"])
            elif name == "ResultRevealed":
                v.revealed_mask |= 1 << a["index"]
                v.reveals[a["index"]] = bytes(a["result"])
            elif name == "JobSettled":
                v.settled, v.outcome, v.settlement = True, Outcome(a["outcome"]), dict(a)
        v.job = job
        if job is not None and not v.settled:
            if slot in (0, TOMBSTONE_SLOT):
                raise AgoraError(f"job {Web3.to_hex(job_id)} has no live state on-chain but no JobSettled event "
                                 f"was found (logs pruned by the RPC?)")
            if slot & HASH_MASK != job.slot_hash():
                raise AgoraError(f"job {Web3.to_hex(job_id)}: events do not match the on-chain state "
                                 f"(a reorg, or logs pruned by the RPC?)")
        return v
