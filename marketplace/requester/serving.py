"""Serving: a job's spec and inputs to its assigned providers only (/agora/blob/1, chunked, content-addressed),
and the protocols of extensions (collaborative training) routed to the engine that runs each job."""

from __future__ import annotations

import json

from libp2p.peer.id import ID

from marketplace import protocol as P
from marketplace.errors import AgoraError
from marketplace.requester.core import Extension, RequesterContext
from marketplace.requester.session import JobSession


class Serving:
    """The blob and extension handlers of one requester."""

    def __init__(self, ctx: RequesterContext) -> None:
        self.ctx = ctx

    async def on_blob(self, payload: bytes, peer: ID) -> bytes:
        """/agora/blob/1: one chunk of a blob this peer may read (an input of a job it was assigned, or what an
        extension serves it)."""
        try:
            req: P.BlobRequest = P.decode(payload, P.BlobRequest)
        except P.ProtocolError as err:
            return P.blob_reply_err(str(err))
        job_id = req.job_id.lower()
        session = self.ctx.sessions.get(job_id)
        ext: Extension | None = self.ctx.extensions.get(job_id)
        try:
            if ext is not None:
                data = ext.serve_blob(str(peer), req.blob)
            elif session is not None and session.winner_by_peer(str(peer)) is not None:
                data = self.job_input(session, req.blob)
            else:
                return P.blob_reply_err("not a provider of this job")
        except AgoraError as err:
            return P.blob_reply_err(str(err))
        if req.offset > len(data):
            return P.blob_reply_err("offset past the end")
        chunk = data[req.offset:req.offset + req.length]
        if ext is not None:
            ext.served(len(chunk))
        return P.blob_reply_ok(len(data), chunk)

    def job_input(self, session: JobSession, blob: str) -> bytes:
        """The job's canonical spec (`spec:<hash>`) or one of its input blobs; AgoraError for anything else."""
        if blob in session.cache:
            return session.cache[blob]
        if blob.startswith("spec:"):
            if blob[5:] != "0x" + session.spec.spec_hash().hex():
                raise AgoraError("not this job's spec")
            data = session.spec_json
        elif blob in session.spec.blobs():
            data = self.ctx.blobs.get_bytes(blob)
        else:
            raise AgoraError("not an input of this job")
        session.cache[blob] = data
        return data

    async def on_extension(self, payload: bytes, peer: ID) -> bytes:
        """Messages of jobs run by an extension (collaborative training), routed by their `job_id`."""
        try:
            job_id = str(json.loads(payload).get("job_id", "")).lower()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return P.Ack(ok=False, code=P.RejectCode.MALFORMED, reason="not a JSON object").encode()
        ext = self.ctx.extensions.get(job_id)
        if ext is None:
            return P.Ack(ok=False, code=P.RejectCode.UNKNOWN_JOB, reason="unknown job").encode()
        return await ext.on_message(payload, str(peer))
