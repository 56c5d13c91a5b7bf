"""A content-addressed blob store: job inputs, weights and data orders are safetensors blobs named by sha256.

Layout: `<root>/sha256/<first 2 hex>/<64 hex>`, one file per blob, written through a temporary file and an atomic
rename (so a reader never sees half a blob) and re-hashed whenever it is read (so a corrupted or tampered file is
caught, not used). A blob id is `sha256:<64 lowercase hex>`, the `BlobId` of `marketplace.spec`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from marketplace.errors import BlobIntegrityError, BlobNotFoundError, BlobTooLargeError, SpecError

BLOB_ID_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
DEFAULT_MAX_BLOB_BYTES = 2 * 1024**3
_READ = 1 << 20


def blob_id_of(data: bytes | memoryview) -> str:
    """The id of `data`: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_blob_id(blob_id: str) -> str:
    """The 64 hex digits of a blob id. Raises SpecError for anything that is not `sha256:<64 lowercase hex>`."""
    m = BLOB_ID_RE.match(blob_id) if isinstance(blob_id, str) else None
    if m is None:
        raise SpecError(f"malformed blob id {blob_id!r}: expected sha256:<64 lowercase hex digits>")
    return m.group(1)


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob: its id, size in bytes and file."""

    id: str
    size: int
    path: Path


class BlobStore:
    """Blobs under `root`; `max_blob_bytes` caps what is stored and (unless a call says otherwise) read."""

    def __init__(self, root: Path | str, *, max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> None:
        if max_blob_bytes < 1:
            raise ValueError(f"max_blob_bytes must be positive, got {max_blob_bytes}")
        self.root = Path(root).expanduser()
        self.max_blob_bytes = max_blob_bytes

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r}, max_blob_bytes={self.max_blob_bytes})"

    # ------------------------------------------------------------------ layout
    def _file(self, blob_id: str) -> Path:
        hexd = parse_blob_id(blob_id)
        return self.root / "sha256" / hexd[:2] / hexd

    @contextmanager
    def _temp(self) -> Iterator[tuple[IO[bytes], Path]]:
        """A temporary file on the store's file system; removed unless the caller renamed it away."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _install(self, tmp: Path, blob_id: str) -> None:
        target = self._file(blob_id)
        if target.exists():
            return  # idempotent: same id, same bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def _too_large(self, size: int, limit: int, what: str, *, at_least: bool = False) -> BlobTooLargeError:
        return BlobTooLargeError(f"{what} is {'more than ' if at_least else ''}{size:,} bytes, over the "
                                 f"{limit:,}-byte cap", size=size, limit=limit)

    # ------------------------------------------------------------------ writing
    def put_bytes(self, data: bytes) -> str:
        """Store `data`; return its id. Idempotent. Raises BlobTooLargeError (nothing stored) over the cap."""
        if len(data) > self.max_blob_bytes:
            raise self._too_large(len(data), self.max_blob_bytes, "blob")
        blob_id = blob_id_of(data)
        if self._file(blob_id).exists():
            return blob_id
        with self._temp() as (f, tmp):
            f.write(data)
            f.close()
            self._install(tmp, blob_id)
        return blob_id

    def put_file(self, path: Path | str) -> str:
        """Store a file's bytes, streaming (hash and copy in 1 MiB reads); return the id. Raises OSError when the
        file cannot be read, BlobTooLargeError (nothing stored) as soon as more than the cap has been read."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as src, self._temp() as (f, tmp):
            while chunk := src.read(_READ):
                size += len(chunk)
                if size > self.max_blob_bytes:
                    raise self._too_large(size, self.max_blob_bytes, f"file {path}", at_least=True)
                h.update(chunk)
                f.write(chunk)
            f.close()
            blob_id = "sha256:" + h.hexdigest()
            self._install(tmp, blob_id)
        return blob_id

    # ------------------------------------------------------------------ reading
    def has(self, blob_id: str) -> bool:
        """Whether the blob is stored. Raises SpecError for a malformed id."""
        return self._file(blob_id).is_file()

    def path(self, blob_id: str) -> Path:
        """The blob's file (not re-hashed). Raises SpecError (malformed id), BlobNotFoundError."""
        p = self._file(blob_id)
        if not p.is_file():
            raise BlobNotFoundError(f"blob {blob_id} is not in the store {self.root}")
        return p

    def get_bytes(self, blob_id: str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes, re-hashed. The size is checked against `max_bytes` (and the store's cap) BEFORE
        reading. Raises SpecError, BlobNotFoundError, BlobTooLargeError, BlobIntegrityError."""
        p = self.path(blob_id)
        limit = self.max_blob_bytes if max_bytes is None else min(max_bytes, self.max_blob_bytes)
        size = p.stat().st_size
        if size > limit:
            raise self._too_large(size, limit, f"blob {blob_id}")
        with open(p, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew after the stat
            raise self._too_large(len(data), limit, f"blob {blob_id}", at_least=True)
        actual = blob_id_of(data)
        if actual != blob_id:
            raise BlobIntegrityError(f"blob {blob_id} is corrupt: its bytes hash to {actual} ({p})")
        return data

    def verify(self, blob_id: str) -> None:
        """Re-hash a stored blob, streaming. Raises SpecError, BlobNotFoundError, BlobIntegrityError."""
        p = self.path(blob_id)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != blob_id:
            raise BlobIntegrityError(f"blob {blob_id} is corrupt: its bytes hash to sha256:{h.hexdigest()} ({p})")

    def ls(self) -> list[BlobInfo]:
        """Every stored blob, sorted by id (files whose names are not blob ids are ignored)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return []
        out = []
        for p in base.glob("??/*"):
            blob_id = "sha256:" + p.name
            if BLOB_ID_RE.match(blob_id) and p.parent.name == p.name[:2] and p.is_file():
                out.append(BlobInfo(blob_id, p.stat().st_size, p))
        return sorted(out, key=lambda b: b.id)

    def remove(self, blob_id: str) -> None:
        """Delete a blob. Raises SpecError (malformed id), BlobNotFoundError."""
        self.path(blob_id).unlink()


def default_store() -> BlobStore:
    """The store at `<AGORA_HOME>/blobs` (AGORA_HOME defaults to ~/.agora)."""
    from marketplace.config import load_settings

    return BlobStore(load_settings().home / "blobs")
