"""The collab coordinator's records: each participant's standing, each round's outcome, and the report that
`agora collab run` returns and writes to `collab.json`."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, computed_field
from pydantic.alias_generators import to_camel

from marketplace.models import Model, Record, WeiInt
from marketplace.requester.ranking import Explanation


class Participant(Record):
    index: int
    provider: str
    peer: str
    price: WeiInt
    shard: dict[str, Any]
    count: int = 0  # accepted contributions so far
    waiting: bool = True  # waited for each round; false after a missed round, until it delivers again
    missed: list[int] = Field(default_factory=list)
    rejected: list[int] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def paid(self) -> WeiInt:
        return self.count * self.price


class RoundRecord(Record):
    round: int
    model: str  # the global model the round started from
    aggregate: str = ""  # the model it produced
    accepted: list[dict[str, Any]] = Field(default_factory=list)
    rejected: list[dict[str, Any]] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    wall_s: float = 0.0
    wait_s: float = 0.0  # from the round message to the last update (or the deadline)
    aggregate_s: float = 0.0
    compute_s: dict[str, float] = Field(default_factory=dict)  # as reported by each participant
    bytes_in: int = 0  # update blobs fetched by the coordinator
    bytes_out: int = 0  # blobs served to participants during the round (models, updates to verify)


class CollabReport(Model):
    """What `run` returns and writes to `<out_dir>/collab.json` (camelCase keys, wei as decimal strings)."""

    model_config = ConfigDict(alias_generator=to_camel)

    job_id: str
    spec_hash: str
    model: str
    model_hash: str
    model_file: str
    rule: str
    rounds: list[RoundRecord]
    stopped: str | None
    deadline: int
    participants: list[Participant]
    paid: WeiInt
    escrow: WeiInt
    bytes_per_round: float
    gas: dict[str, int]
    timings: dict[str, float]
    explanation: Explanation
