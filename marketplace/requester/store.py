"""The requester's durable memory: `<AGORA_HOME>/requester/<address>/requester.db` (SQLite, WAL).

Why a database: a job outlives the process that announced it (results arrive minutes later, `agora job
resume` finishes after a restart), and the explanation of who won and why must stay readable afterwards.
One row per announced job (keyed by announcement id, later also by job id), every bid received with its
status and reason, and the commitments, reveals and signed results providers sent.
"""

from __future__ import annotations

import json
import sqlite3
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from eth_utils import to_checksum_address
from pydantic import Field

from marketplace.models import Model, WeiInt
from marketplace.sqlite import Migration, SqliteStore


class JobState(StrEnum):
    """A requester job's state (stored as its value)."""

    ANNOUNCED = "announced"
    NO_BIDS = "no-bids"
    OPENING = "opening"
    OPEN = "open"
    COMMITTED = "committed"
    REVEALED = "revealed"
    SETTLED = "settled"
    FAILED = "failed"
    COLLAB = "collab"  # followed by marketplace.collab, not here


STATES = tuple(s.value for s in JobState)
FINAL_STATES = (JobState.NO_BIDS.value, JobState.SETTLED.value, JobState.FAILED.value, JobState.COLLAB.value)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    ann_id TEXT PRIMARY KEY,
    job_id TEXT UNIQUE,
    announcement TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    spec_path TEXT,
    state TEXT NOT NULL,
    k INTEGER NOT NULL,
    max_price TEXT NOT NULL,
    winners TEXT NOT NULL DEFAULT '[]',
    explanation TEXT,
    out_dir TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    gas TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bids (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ann_id TEXT NOT NULL,
    provider TEXT,
    peer TEXT NOT NULL,
    price TEXT,
    collateral TEXT,
    status TEXT NOT NULL,
    code TEXT,
    reason TEXT NOT NULL DEFAULT '',
    offer TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bids_ann ON bids (ann_id);
CREATE TABLE IF NOT EXISTS commits (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, commitment TEXT NOT NULL, sig TEXT NOT NULL,
    posted INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS reveals (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, result TEXT NOT NULL, salt TEXT NOT NULL, outputs TEXT NOT NULL,
    peer TEXT NOT NULL, posted INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY, result TEXT NOT NULL, sig TEXT NOT NULL, outputs TEXT NOT NULL, peer TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL
);
"""

#: Schema versions, in order (see marketplace.sqlite): 1 is the schema of the first release.
MIGRATIONS: list[Migration] = [SCHEMA]


def store_path(home: Path, address: str) -> Path:
    """`<home>/requester/<checksum address>/requester.db`."""
    return Path(home).expanduser() / "requester" / to_checksum_address(address) / "requester.db"


class JobRow(Model):
    """One job as stored; `to_json()` with `max_price` a decimal string of wei."""

    ann_id: str
    job_id: str | None
    announcement: dict[str, Any]
    spec_hash: str
    spec_path: str | None
    state: Annotated[JobState, Field(strict=False)]
    k: int
    max_price: WeiInt
    winners: list[dict[str, Any]] = Field(default_factory=list)
    explanation: dict[str, Any] | None = None
    out_dir: str | None = None
    timings: dict[str, Any] = Field(default_factory=dict)  # seconds, and notes such as an open attempt
    gas: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


def _row(r: sqlite3.Row) -> JobRow:
    return JobRow(ann_id=r["ann_id"], job_id=r["job_id"], announcement=json.loads(r["announcement"]),
                  spec_hash=r["spec_hash"], spec_path=r["spec_path"], state=r["state"], k=int(r["k"]),
                  max_price=int(r["max_price"]), winners=json.loads(r["winners"]),
                  explanation=json.loads(r["explanation"]) if r["explanation"] else None, out_dir=r["out_dir"],
                  timings=json.loads(r["timings"]), gas=json.loads(r["gas"]), error=r["error"],
                  created_at=float(r["created_at"]), updated_at=float(r["updated_at"]))


class RequesterStore(SqliteStore):
    """Thread-safe (one connection, one lock): the engine writes from trio, worker threads may read."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, MIGRATIONS, synchronous="NORMAL")

    @classmethod
    def for_account(cls, home: Path, address: str) -> RequesterStore:
        return cls(store_path(home, address))

    # ------------------------------------------------------------------ jobs
    def add_job(self, *, ann_id: str, announcement: dict[str, Any], spec_hash: str, spec_path: str | None,
                k: int, max_price: int, out_dir: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO jobs (ann_id, announcement, spec_hash, spec_path, state, k, max_price, out_dir, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, 'announced', ?, ?, ?, ?, ?)",
                       (ann_id, json.dumps(announcement, sort_keys=True), spec_hash, spec_path, k, str(max_price),
                        out_dir, now, now))

    def update_job(self, ann_id: str, **changes: Any) -> None:
        """Set columns of one job; dicts and lists are stored as JSON, `state` is checked."""
        if "state" in changes and changes["state"] not in STATES:
            raise ValueError(f"unknown job state {changes['state']!r}")
        cols, vals = [], []
        for key, value in changes.items():
            if key not in ("job_id", "state", "winners", "explanation", "out_dir", "timings", "gas", "error",
                           "spec_path"):
                raise ValueError(f"cannot update column {key!r}")
            cols.append(f"{key} = ?")
            vals.append(json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value)
        cols.append("updated_at = ?")
        vals.append(time.time())
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {', '.join(cols)} WHERE ann_id = ?", (*vals, ann_id))  # noqa: S608

    def merge_json(self, ann_id: str, column: str, values: dict[str, Any]) -> None:
        """Add keys to the `timings` or `gas` object of a job (read-modify-write under the lock)."""
        if column not in ("timings", "gas"):
            raise ValueError(f"cannot merge into {column!r}")
        with self._tx() as db:
            row = db.execute(f"SELECT {column} FROM jobs WHERE ann_id = ?", (ann_id,)).fetchone()  # noqa: S608
            if row is None:
                raise KeyError(ann_id)
            merged = {**json.loads(row[0]), **values}
            db.execute(f"UPDATE jobs SET {column} = ?, updated_at = ? WHERE ann_id = ?",  # noqa: S608
                       (json.dumps(merged, sort_keys=True), time.time(), ann_id))

    def job(self, key: str) -> JobRow | None:
        """A job by announcement id or job id (either 0x-hex, any case), or by a unique job-id prefix."""
        key = key.lower()
        rows = self._query("SELECT * FROM jobs WHERE lower(ann_id) = ? OR lower(job_id) = ?", (key, key))
        if not rows and len(key) >= 6:
            rows = self._query("SELECT * FROM jobs WHERE lower(job_id) LIKE ?", (key + "%",))
            if len(rows) != 1:
                return None
        return _row(rows[0]) if rows else None

    def jobs(self, *, unfinished: bool = False) -> list[JobRow]:
        sql = "SELECT * FROM jobs"
        if unfinished:
            sql += f" WHERE state NOT IN ({', '.join('?' for _ in FINAL_STATES)})"
        return [_row(r) for r in self._query(sql + " ORDER BY created_at", FINAL_STATES if unfinished else ())]

    # ------------------------------------------------------------------ bids
    def add_bid(self, *, ann_id: str, provider: str | None, peer: str, price: int | None, collateral: int | None,
                status: str, code: str | None, reason: str, offer: dict[str, Any]) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO bids (ann_id, provider, peer, price, collateral, status, code, reason, "
                             "offer, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (ann_id, provider, peer, None if price is None else str(price),
                              None if collateral is None else str(collateral), status, code, reason,
                              json.dumps(offer, sort_keys=True), time.time()))
            return int(cur.lastrowid or 0)

    def set_bid_status(self, bid_id: int, status: str, reason: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE bids SET status = ?, reason = ? WHERE id = ?", (status, reason, bid_id))

    def bids(self, ann_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM bids WHERE ann_id = ? ORDER BY id", (ann_id,))
        return [{**dict(r), "offer": json.loads(r["offer"])} for r in rows]

    # ------------------------------------------------------------------ commits, reveals, results
    def add_commit(self, job_id: str, idx: int, commitment: str, sig: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO commits (job_id, idx, commitment, sig, received_at) "
                       "VALUES (?, ?, ?, ?, ?)", (job_id, idx, commitment, json.dumps(sig), time.time()))

    def commits(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = self._query("SELECT * FROM commits WHERE job_id = ? ORDER BY idx", (job_id,))
        return {int(r["idx"]): {"commitment": r["commitment"], "sig": json.loads(r["sig"]),
                                "posted": bool(r["posted"])} for r in rows}

    def add_reveal(self, job_id: str, idx: int, result: str, salt: str, outputs: list[dict[str, Any]],
                   peer: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO reveals (job_id, idx, result, salt, outputs, peer, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (job_id, idx, result, salt, json.dumps(outputs), peer, time.time()))

    def reveals(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = self._query("SELECT * FROM reveals WHERE job_id = ? ORDER BY idx", (job_id,))
        return {int(r["idx"]): {"result": r["result"], "salt": r["salt"], "outputs": json.loads(r["outputs"]),
                                "peer": r["peer"], "posted": bool(r["posted"])} for r in rows}

    def mark_posted(self, table: str, job_id: str, indices: list[int]) -> None:
        if table not in ("commits", "reveals"):
            raise ValueError(table)
        with self._tx() as db:
            db.executemany(f"UPDATE {table} SET posted = 1 WHERE job_id = ? AND idx = ?",  # noqa: S608
                           [(job_id, i) for i in indices])

    def add_result(self, job_id: str, result: str, sig: dict[str, Any], outputs: list[dict[str, Any]], peer: str,
                   status: str, reason: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO results (job_id, result, sig, outputs, peer, status, reason, "
                       "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, result, json.dumps(sig), json.dumps(outputs), peer, status, reason, time.time()))

    def result(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM results WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        r = rows[0]
        return {**dict(r), "sig": json.loads(r["sig"]), "outputs": json.loads(r["outputs"])}
