"""Atomic file writes: a reader, or a crash at any point, sees the old file or the new one, never a mix.

The one way: a temporary file in the same directory (so the rename stays on one file system), written and
fsync'ed, renamed over the target, then the directory fsync'ed (so the rename itself survives power loss).
OSError propagates (e.g. EFBIG under RLIMIT_FSIZE, ENOSPC); the temporary file is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: Path | str, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically (creating its directory); `mode` sets the file's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(name, mode)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode(), mode=mode)


def atomic_write_json(path: Path | str, doc: Any, *, mode: int | None = None) -> Path:
    """`doc` as pretty JSON (sorted keys, indent 2, one trailing newline); values JSON cannot hold go as str()."""
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", mode=mode)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
