"""The node's durable memory: one SQLite database (WAL) with a row per bid and per job.

Why SQLite and synchronous writes: a node may be SIGKILLed at any point and must resume every unsettled job
from this file plus the chain. In particular the salt and result of a commitment are written (and committed to
disk) before the commitment leaves the process; otherwise a restart could never reveal it.

Job states, in order: assigned, running, computed, committed, revealed, submitted, then settled or failed.
Bid outcomes: pending, won, lost, declined.
"""

from __future__ import annotations

import json
import sqlite3
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from marketplace.models import DecimalInt, Model, Record, WeiInt
from marketplace.sqlite import Migration, SqliteStore


class ProviderJobState(StrEnum):
    """A node job's state, in order (stored as its value)."""

    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPUTED = "computed"
    COMMITTED = "committed"
    REVEALED = "revealed"
    SUBMITTED = "submitted"
    SETTLED = "settled"
    FAILED = "failed"


class BidOutcome(StrEnum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"
    DECLINED = "declined"


JOB_STATES = tuple(s.value for s in ProviderJobState)
FINAL_STATES = (ProviderJobState.SETTLED.value, ProviderJobState.FAILED.value)
SENT_RESULT, SENT_REVEAL, SENT_COMMIT = 1, 2, 4  # bits of `sent`: which messages the requester acked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bids (
    nonce TEXT PRIMARY KEY,          -- decimal uint256
    ann_id TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_peer TEXT NOT NULL,
    requester_addrs TEXT NOT NULL,   -- JSON list
    kind TEXT NOT NULL,
    price TEXT NOT NULL,
    collateral TEXT NOT NULL,
    run_seconds INTEGER NOT NULL,
    expiry INTEGER NOT NULL,         -- chain time
    announce TEXT NOT NULL,          -- the announcement's JSON
    outcome TEXT NOT NULL DEFAULT 'pending',
    job_id TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bids_pending ON bids(outcome, spec_hash);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    ann_id TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    idx INTEGER NOT NULL,
    replicas INTEGER NOT NULL,
    price TEXT NOT NULL,
    collateral TEXT NOT NULL,
    requester TEXT NOT NULL,
    requester_peer TEXT NOT NULL,
    requester_addrs TEXT NOT NULL,
    deadline INTEGER NOT NULL,
    window INTEGER NOT NULL,
    bid_nonce TEXT,
    state TEXT NOT NULL,
    result TEXT,
    salt TEXT,
    result_dir TEXT,
    outputs TEXT,                    -- JSON list of OutputRef dicts
    error TEXT,
    outcome TEXT,
    earnings TEXT NOT NULL DEFAULT '0',
    exec_seconds REAL,
    sent INTEGER NOT NULL DEFAULT 0, -- bits: 1 result, 2 reveal, 4 commit message acked
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Schema versions, in order (see marketplace.sqlite): 1 is the schema of the first release.
MIGRATIONS: list[Migration] = [_SCHEMA]


class BidRow(Model):
    """One bid this node sent, as stored."""

    nonce: DecimalInt
    ann_id: str
    spec_hash: str
    requester: str
    requester_peer: str
    requester_addrs: list[str]
    kind: str
    price: WeiInt
    collateral: WeiInt
    run_seconds: int
    expiry: int
    announce: dict[str, Any]
    outcome: Annotated[BidOutcome, Field(strict=False)] = BidOutcome.PENDING
    job_id: str | None = None
    created: float = Field(default_factory=time.time)


class ProviderJobRow(Record):
    """One job of this node, as stored (the agent updates it in place, then through `NodeStore.update_job`);
    `to_json()` (for /jobs) with amounts as decimal strings of wei."""

    job_id: str
    ann_id: str
    spec_hash: str
    kind: str
    idx: int
    replicas: int
    price: WeiInt
    collateral: WeiInt
    requester: str
    requester_peer: str
    requester_addrs: list[str]
    deadline: int
    window: int
    state: Annotated[ProviderJobState, Field(strict=False)] = ProviderJobState.ASSIGNED
    bid_nonce: DecimalInt | None = None
    result: str | None = None
    salt: str | None = None
    result_dir: str | None = None
    outputs: list[dict[str, Any]] | None = None
    error: str | None = None
    outcome: str | None = None
    earnings: WeiInt = 0
    exec_seconds: float | None = None
    sent: int = 0  # SENT_RESULT | SENT_REVEAL | SENT_COMMIT once the requester acknowledged them
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)


_JSON_COLS = {"requester_addrs", "announce", "outputs"}
_INT_TEXT_COLS = {"nonce", "price", "collateral", "earnings", "bid_nonce"}


def _to_db(col: str, value: Any) -> Any:
    if value is None:
        return None
    if col in _JSON_COLS:
        return json.dumps(value, sort_keys=True)
    if col in _INT_TEXT_COLS:
        return str(int(value))
    return value


def _from_db(col: str, value: Any) -> Any:
    if value is None:
        return None
    if col in _JSON_COLS:
        return json.loads(value)
    if col in _INT_TEXT_COLS:
        return int(value)
    return value


class NodeStore(SqliteStore):
    """Thread-safe (one connection, one lock): the agent calls it from trio and from worker threads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, MIGRATIONS, synchronous="FULL")

    # ------------------------------------------------------------------ bids
    def add_bid(self, bid: BidRow) -> None:
        cols = list(BidRow.model_fields)
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO bids ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                       tuple(_to_db(c, getattr(bid, c)) for c in cols))

    def set_bid_outcome(self, nonce: int, outcome: str, job_id: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE bids SET outcome = ?, job_id = COALESCE(?, job_id) WHERE nonce = ?",
                       (outcome, job_id, str(nonce)))

    def bid(self, nonce: int) -> BidRow | None:
        rows = self._query("SELECT * FROM bids WHERE nonce = ?", (str(nonce),))
        return self._bid(rows[0]) if rows else None

    def pending_bids(self) -> list[BidRow]:
        """Bids not yet known to have won or lost (a job may still assign them)."""
        return [self._bid(r) for r in self._query("SELECT * FROM bids WHERE outcome = 'pending' ORDER BY created")]

    def unclaimed_bids(self, spec_hash: str) -> list[BidRow]:
        """Bids for `spec_hash` that no job has claimed yet; lost ones too (a requester may still use a bid it
        refused, or one that expired while this node was down but was assigned before its expiry)."""
        rows = self._query("SELECT * FROM bids WHERE outcome IN ('pending', 'lost') AND spec_hash = ? "
                           "ORDER BY created", (spec_hash.lower(),))
        return [self._bid(r) for r in rows]

    def bids_for(self, ann_id: str) -> list[BidRow]:
        """This node's bids on announcement `ann_id` (any outcome), oldest first."""
        rows = self._query("SELECT * FROM bids WHERE ann_id = ? ORDER BY created", (ann_id.lower(),))
        return [self._bid(r) for r in rows]

    def expire_bids(self, chain_now: int) -> int:
        """Mark pending bids whose expiry has passed as lost; returns how many."""
        with self._tx() as db:
            cur = db.execute("UPDATE bids SET outcome = 'lost' WHERE outcome = 'pending' AND expiry < ?",
                             (int(chain_now),))
            return int(cur.rowcount)

    @staticmethod
    def _bid(row: sqlite3.Row) -> BidRow:
        return BidRow(**{k: _from_db(k, row[k]) for k in row.keys()})

    # ------------------------------------------------------------------ jobs
    def add_job(self, job: ProviderJobRow) -> bool:
        """Insert a job unless one with this id exists; True when inserted."""
        cols = list(ProviderJobRow.model_fields)
        with self._tx() as db:
            cur = db.execute(f"INSERT OR IGNORE INTO jobs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                             tuple(_to_db(c, getattr(job, c)) for c in cols))
            return cur.rowcount == 1

    def update_job(self, job_id: str, **changes: Any) -> None:
        if not changes:
            return
        bad = set(changes) - set(ProviderJobRow.model_fields)
        if bad:
            raise KeyError(f"unknown job fields {sorted(bad)}")
        if "state" in changes and changes["state"] not in JOB_STATES:
            raise ValueError(f"unknown job state {changes['state']!r}")
        changes["updated"] = time.time()
        sets = ", ".join(f"{c} = ?" for c in changes)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?",
                       tuple(_to_db(c, v) for c, v in changes.items()) + (job_id,))

    def job(self, job_id: str) -> ProviderJobRow | None:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def jobs(self, *, limit: int = 1000) -> list[ProviderJobRow]:
        return [self._job(r) for r in self._query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def unsettled_jobs(self) -> list[ProviderJobRow]:
        """Every job a (re)started node still has to drive to settlement."""
        marks = ",".join("?" * len(FINAL_STATES))
        return [self._job(r) for r in
                self._query(f"SELECT * FROM jobs WHERE state NOT IN ({marks}) ORDER BY created", FINAL_STATES)]

    def active_count(self) -> int:
        """Jobs that hold capacity: assigned but not yet computed."""
        rows = self._query("SELECT COUNT(*) FROM jobs WHERE state IN ('assigned', 'running')")
        return int(rows[0][0])

    def state_counts(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def total_earnings(self) -> int:
        return sum(int(r[0]) for r in self._query("SELECT earnings FROM jobs"))

    @staticmethod
    def _job(row: sqlite3.Row) -> ProviderJobRow:
        return ProviderJobRow(**{k: _from_db(k, row[k]) for k in row.keys()})

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
