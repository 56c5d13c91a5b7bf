"""The node's request handlers: what peers may ask of it over libp2p streams.

- ASSIGN_PROTOCOL: `Assigned` (claim the job, checked on chain), `Nudge` (re-read a job's chain state now),
  `CollabAssigned` (join a collaborative training job, checked on chain);
- COLLAB_PROTOCOL: round messages pushed by a collab job's requester;
- BLOB_PROTOCOL: a job's outputs (or a collab update) to that job's requester only, chunk by chunk, each file
  checked against its blob id before it is served.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from libp2p.peer.id import ID

from marketplace.collab.protocol import COLLAB_PROTOCOL, CollabAssigned
from marketplace.errors import AgoraError
from marketplace.p2p import P2PHost
from marketplace.protocol import (
    ASSIGN_PROTOCOL,
    BLOB_PROTOCOL,
    Ack,
    Assigned,
    BlobRequest,
    Nudge,
    ProtocolError,
    RejectCode,
    blob_reply_err,
    blob_reply_ok,
    decode,
)

from .collab import CollabJobs
from .context import REQUEST_TIMEOUT_S, NodeContext
from .jobs import JobRunner


class RequestHandlers:
    """Answers the node's three request protocols; the work itself is the jobs' and the collab jobs'."""

    def __init__(self, ctx: NodeContext, *, jobs: JobRunner, collab: CollabJobs) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.collab = collab
        self._intact: set[tuple[str, str, int, int]] = set()  # output files checked against their blob id

    def serve(self, host: P2PHost) -> None:
        host.serve(ASSIGN_PROTOCOL, self.on_assigned)
        host.serve(COLLAB_PROTOCOL, self.on_collab)
        host.serve(BLOB_PROTOCOL, self.on_blob_request, timeout=REQUEST_TIMEOUT_S)

    async def on_assigned(self, payload: bytes, peer: ID) -> bytes:
        try:
            msg: Assigned | Nudge | CollabAssigned = decode(payload, (Assigned, Nudge, CollabAssigned))
        except ProtocolError as err:
            self.ctx.metrics.rejected.labels(reason=err.reason).inc()
            return Ack.reject(err).encode()
        if isinstance(msg, CollabAssigned):
            ok, reason = await self.collab.join(msg)
            return Ack(ok=ok, reason=reason[:500]).encode()
        if isinstance(msg, Nudge):  # only a hint: the job's driver re-reads the chain and trusts nothing else
            known = self.jobs.wake(msg.job_id)
            return Ack(ok=known, code=None if known else RejectCode.UNKNOWN_JOB,
                       reason="" if known else "unknown job").encode()
        ok, reason = await self.jobs.claim(msg.job_id, index=msg.index)
        return Ack(ok=ok, reason=reason[:500]).encode()

    async def on_collab(self, payload: bytes, peer: ID) -> bytes:
        """Round messages pushed by a collab job's requester."""
        try:
            job_id = str(json.loads(payload).get("job_id", "")).lower()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return Ack(ok=False, code=RejectCode.MALFORMED, reason="not a JSON object").encode()
        part = self.collab.participants.get(job_id)
        if part is None:
            return Ack(ok=False, code=RejectCode.UNKNOWN_JOB, reason="unknown job").encode()
        return part.take(payload).encode()

    async def on_blob_request(self, payload: bytes, peer: ID) -> bytes:
        """Serve a job's outputs to that job's requester peer only."""
        try:
            req: BlobRequest = decode(payload, BlobRequest)
        except ProtocolError as err:
            self.ctx.metrics.rejected.labels(reason=err.reason).inc()
            return blob_reply_err(str(err))
        part = self.collab.participants.get(req.job_id.lower())
        if part is not None:
            try:
                data = part.serve_blob(str(peer), req.blob)
            except AgoraError as err:
                return blob_reply_err(str(err))
            return blob_reply_ok(len(data), data[req.offset:req.offset + req.length])
        row = self.ctx.store.job(req.job_id.lower())
        if row is None or str(peer) != row.requester_peer:
            return blob_reply_err("not a party of this job")
        ref = next((o for o in row.outputs or [] if o["blob"] == req.blob), None)
        if ref is None or row.result_dir is None:
            return blob_reply_err(f"no output {req.blob} for this job")
        path = Path(row.result_dir) / ref["name"]
        try:
            if not self._output_intact(path, req.blob):
                return blob_reply_err("output changed on disk")
            with open(path, "rb") as f:
                f.seek(req.offset)
                chunk = f.read(req.length)
        except OSError as err:
            return blob_reply_err(f"output unavailable: {err.strerror}")
        return blob_reply_ok(int(ref["size"]), chunk)

    def _output_intact(self, path: Path, blob: str) -> bool:
        """Does `path` still hash to `blob`? Hashed once per file version (size, mtime), not once per chunk."""
        st = path.stat()
        key = (str(path), blob, st.st_size, st.st_mtime_ns)
        if key not in self._intact:
            if hashlib.sha256(path.read_bytes()).hexdigest() != blob.split(":", 1)[1]:
                return False
            self._intact.add(key)
        return True
