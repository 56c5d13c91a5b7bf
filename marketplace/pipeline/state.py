"""A pipeline run's durable state: `<state dir>/state.json`, rewritten atomically after every step.

Why a file of its own: the requester database knows jobs, not pipelines. This file ties each stage to the
announcement it made (recorded before anything leaves the process, via `Requester.submit(on_announced=...)`),
its job, cost and output blobs, so a run killed at any point resumes without paying twice: finished stages are
kept, an opened job is watched again, an announcement that never opened is made again (nothing was paid).

Stage status: `pending` (nothing sent), `announced` (ann id recorded; the requester DB says how far it got),
`open` (job id known), `done` (settled, outputs verified and split into blobs), `failed` (the last attempt
failed; rerunning looks at its job first: a job that opened, or may have, is resumed, never paid for again).
Costs and amounts are wei, as decimal strings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from marketplace.errors import PipelineChangedError, PipelineError
from marketplace.fsutil import atomic_write_json
from marketplace.models import Record, validation_message
from marketplace.pipeline.model import Pipeline

STATE_VERSION = 1
STATE_FILE = "state.json"
STATUSES = ("pending", "announced", "open", "done", "failed")


class StageRecord(Record):
    stage_hash: str
    kind: str = ""
    status: str = "pending"
    ann_id: str | None = None
    job_id: str | None = None
    spec_hash: str | None = None
    result_hash: str | None = None
    winners: list[dict[str, Any]] = Field(default_factory=list)
    reserved: str = "0"
    cost: str = "0"
    gas: dict[str, int] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    out_dir: str | None = None
    error: str | None = None
    times: dict[str, float] = Field(default_factory=dict)
    attempts: list[dict[str, Any]] = Field(default_factory=list)  # earlier failed attempts, with their cost

    @property
    def spent(self) -> int:
        """What this stage has cost so far, earlier failed attempts included."""
        return int(self.cost) + sum(int(a.get("cost", "0")) for a in self.attempts)

    def retry(self) -> None:
        """Move a failed attempt into `attempts` and start over as pending."""
        if self.ann_id or self.job_id or self.error:
            self.attempts.append({"ann_id": self.ann_id, "job_id": self.job_id, "cost": self.cost,
                                  "error": self.error, "times": self.times})
        self.status, self.ann_id, self.job_id, self.error = "pending", None, None, None
        self.spec_hash = self.result_hash = None
        self.winners, self.cost, self.reserved, self.gas, self.times = [], "0", "0", {}, {}


class PipelineState(Record):
    """`state.json` is `to_json()`; `dir` (where it lives) is not part of it."""

    pipeline: str
    file: str | None
    account: str
    budget: str
    stages: dict[str, StageRecord]
    version: int = STATE_VERSION
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    dir: Path | None = Field(default=None, exclude=True)

    # ------------------------------------------------------------------ persistence
    def save(self) -> Path:
        """Write `state.json` atomically (temp file, fsync, rename): a reader or a crash sees old or new."""
        assert self.dir is not None
        self.updated_at = time.time()
        return atomic_write_json(self.dir / STATE_FILE, self.to_json())

    @classmethod
    def load(cls, directory: Path) -> PipelineState:
        path = Path(directory) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise PipelineError(f"no pipeline state at {path}: {err.strerror}") from None
        except ValueError as err:
            raise PipelineError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise PipelineError(f"pipeline state version {version} is not supported")
        try:
            state = cls.from_json(data)
        except ValidationError as err:
            raise PipelineError(f"{path}: malformed pipeline state: {validation_message(err)}") from None
        state.dir = Path(directory)
        return state

    # ------------------------------------------------------------------ run bookkeeping
    @classmethod
    def open(cls, directory: Path, pipe: Pipeline, account: str) -> PipelineState:
        """Load the state of an earlier run (checked against `pipe`) or start a new one."""
        directory = Path(directory)
        if (directory / STATE_FILE).exists():
            state = cls.load(directory)
            state.check_compatible(pipe, account)
        else:
            state = cls(pipeline=pipe.name, file=str(pipe.path) if pipe.path else None, account=account,
                        budget=str(pipe.budget), stages={}, dir=directory)
        for name, stage in pipe.stages.items():
            rec = state.stages.get(name)
            if rec is None:
                state.stages[name] = StageRecord(stage_hash=stage.stage_hash(),
                                                 kind=stage.spec.kind if stage.spec else "")
            elif rec.stage_hash != stage.stage_hash():  # changed but not started (check_compatible): start over
                rec.retry()
                rec.stage_hash = stage.stage_hash()
        state.budget = str(pipe.budget)
        return state

    def check_compatible(self, pipe: Pipeline, account: str) -> None:
        """Refuse to resume when a stage that was paid for, or is in flight, is not the same stage any more."""
        if self.account.lower() != account.lower():
            raise PipelineChangedError(f"pipeline state {self.dir} belongs to {self.account}, not {account}: its jobs "
                                       f"are in that account's requester database (use --state for a new run)")
        changed = []
        for name, rec in self.stages.items():
            if rec.status in ("done", "open", "announced") or rec.job_id:
                stage = pipe.stages.get(name)
                if stage is None and rec.status != "done":
                    changed.append(f"{name} (removed while {rec.status})")
                elif stage is not None and stage.stage_hash() != rec.stage_hash:
                    changed.append(f"{name} ({rec.status})")
        if changed:
            raise PipelineChangedError(
                f"the pipeline changed stage(s) {', '.join(changed)} since the run in {self.dir}: refusing to resume "
                f"(restore the file, or start a new run with another --state)")

    def spent(self) -> int:
        return sum(r.spent for r in self.stages.values())


def fits_budget(budget: int, spent: int, reserved: int, need: int) -> bool:
    """The pipeline's one money rule: a stage may start only if spent + reserved (max price x k of every stage
    in flight) + its own max price x k stays within the budget."""
    return spent + reserved + need <= budget


@dataclass
class Budget:
    """Reservations of stages in flight against the cap; spent comes from the state (finished attempts).

    `held`: reservations of stages that stopped (failed) while their job was open on chain or may still open:
    that job may still cost up to what was reserved, so the money stays reserved for the rest of the run, but
    nobody waits for it to come back (`in_flight` counts running stages only)."""

    cap: int
    state: PipelineState
    reserved: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)

    def try_reserve(self, stage: str, need: int) -> bool:
        if not fits_budget(self.cap, self.state.spent(), sum(self.reserved.values()) + sum(self.held.values()),
                           need):
            return False
        self.reserved[stage] = need
        return True

    def release(self, stage: str) -> None:
        self.reserved.pop(stage, None)

    def hold(self, stage: str) -> None:
        """The stage stopped but its job may still cost: keep its reservation counted, no longer in flight."""
        if stage in self.reserved:
            self.held[stage] = self.reserved.pop(stage)

    @property
    def in_flight(self) -> int:
        return len(self.reserved)


def default_state_dir(home: Path, name: str) -> Path:
    """`<AGORA_HOME>/pipelines/<name>`: beside the requester's own state, writable even when the pipeline file
    is not (examples/ in an installed package)."""
    return Path(home).expanduser() / "pipelines" / name
