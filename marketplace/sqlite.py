"""One SQLite database shared by trio code and worker threads: one connection, one lock, WAL, explicit
transactions. The base of the requester's and the provider node's stores (jobs in flight survive restarts).

Schema versions: a store passes its ordered `migrations`; migration i takes the database from version i to i + 1
(`PRAGMA user_version`), each in one transaction with the version bump, so a crash leaves the old version or the
new one. Version 0 is a database written before versions existed (or a new, empty one): migration 1 is the
schema of that time, written `CREATE ... IF NOT EXISTS`, so both arrive at version 1. A database whose version
is newer than the code's last migration was written by a newer tensoragora: it is refused (StoreVersionError)
rather than read wrongly.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marketplace.errors import StoreVersionError

#: One step of a schema: SQL (a script) or a function given the connection inside the step's transaction.
Migration = str | Callable[[sqlite3.Connection], None]


class SqliteStore:
    """`migrations` run on open, those the database has not had yet (see the module docstring); `synchronous` FULL
    where a write must survive power loss (a commitment's salt), NORMAL where a lost last write is only a redo."""

    def __init__(self, path: Path | str, migrations: Sequence[Migration], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        try:
            self._migrate(list(migrations))
        except BaseException:
            self._db.close()
            raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, migrations: list[Migration]) -> None:
        current = self.schema_version
        if current > len(migrations):
            raise StoreVersionError(
                f"{self.path} has schema version {current}, newer than this tensoragora knows ({len(migrations)}): "
                f"it was written by a newer version; upgrade tensoragora to use it")
        for version, step in enumerate(migrations[current:], start=current + 1):
            with self._tx() as db:
                if callable(step):
                    step(db)
                else:
                    for statement in _statements(step):
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())


def _statements(script: str) -> list[str]:
    """The statements of an SQL script (cut at each `;` where sqlite3 says a statement is complete, so not in a
    string or comment), to run one by one inside a transaction (`executescript` would commit first)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [stmt for stmt in out if stmt.strip("; \n\t")]
