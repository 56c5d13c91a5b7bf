"""Recovery after a crash: a job left "opening" (openJob sent, its id not yet recorded) is adopted, proven never
opened, or left "opening" for a later try; an opened, unsettled job gets its session back from the store and the
chain. Reads here are synchronous (run them in a worker thread)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3.exceptions import TransactionNotFound

from marketplace.requester.core import OPEN_ATTEMPT, RequesterContext, Winner, default_out_dir
from marketplace.requester.session import JobSession
from marketplace.requester.store import JobRow
from marketplace.spec import parse_spec
from marketplace.types import b32, job_id_for


@dataclass(frozen=True)
class OpeningFacts:
    """What the chain says about a row left in "opening" (gathered by `Recovery.opening_facts`)."""

    matched: str | None = None  # id of the JobOpened proven to be this attempt's
    attempt: bool = False  # the attempt (from_block, salt) was recorded: rows written by this version
    nonce: int | None = None  # the nonce openJob was signed with; None: it never reached signing
    tx: str | None = None  # openJob's hash, when a failure revealed it
    receipt_status: int | None = None  # its receipt's status, when mined
    tx_pending: bool = False  # the node holds it, unmined
    latest_nonce: int = 0  # the account's mined transaction count
    pending_nonce: int = 0  # ... counting its transactions waiting in the node's pool


def opening_verdict(f: OpeningFacts) -> tuple[str, str]:
    """("adopt" | "failed" | "opening", why). "failed" only when the chain proves openJob can never open a job
    (reverted, never sent, its nonce used by another transaction, or dropped with nothing pending): a failed row
    is what lets a pipeline announce again, and a wrong one pays twice. Anything else that is not a match stays
    "opening"."""
    if f.matched:
        return "adopt", f"openJob opened job {f.matched}"
    tx = f.tx or "openJob"
    if f.receipt_status == 0:
        return "failed", f"{tx} reverted: no job opened, nothing was paid"
    if f.receipt_status == 1:
        return "opening", f"{tx} was mined but its JobOpened log is not readable yet; run resume again"
    if f.tx_pending:
        return "opening", f"{tx} is still pending: the job may still open"
    if f.attempt and f.nonce is None:
        return "failed", "interrupted before openJob was sent: nothing was paid"
    if f.nonce is not None:
        if f.latest_nonce > f.nonce:
            return "failed", (f"nonce {f.nonce} was used by another transaction and no JobOpened of this "
                              f"attempt exists: openJob was replaced or dropped, nothing was paid")
        if f.pending_nonce > f.nonce:
            return "opening", f"a transaction with nonce {f.nonce} is pending: the job may still open"
        return "failed", f"openJob (nonce {f.nonce}) was dropped: neither mined nor pending, nothing was paid"
    # A row from before attempts were recorded: only an account with nothing pending proves it.
    if f.pending_nonce > f.latest_nonce:
        return "opening", "transactions of this account are pending: the job may still open"
    return "failed", "no JobOpened of this announcement and nothing pending: the job never opened, nothing was paid"


class Recovery:
    """Crash recovery of one requester."""

    def __init__(self, ctx: RequesterContext) -> None:
        self.ctx = ctx

    def recover_opened(self, row: JobRow) -> str | None:
        """A job left in "opening" (a crash, or no receipt, between sending openJob and recording its id): ask
        the chain (`opening_facts`) and act on `opening_verdict`. Adopted: the row becomes "open" with its job id
        and winners, and the id is returned. Proven never opened: the row becomes "failed" (nothing was paid).
        Otherwise (openJob may still be mined) the row stays "opening" with the reason in `error`. Returns None
        in both of the last cases (re-read the row). Runs in a worker thread."""
        facts, log_entry = self.opening_facts(row)
        verdict, detail = opening_verdict(facts)
        if verdict == "failed":
            self.ctx.store.update_job(row.ann_id, state="failed", error=detail)
            return None
        if verdict == "opening":
            self.ctx.store.update_job(row.ann_id, error=detail)
            self.ctx.progress(f"announcement {row.ann_id[:10]}: {detail}")
            return None
        assert log_entry is not None
        return self._adopt(row, log_entry)

    def opening_facts(self, row: JobRow) -> tuple[OpeningFacts, Any]:
        """What the chain says about a row in "opening": (facts, the JobOpened log proven to be this attempt's
        or None). The nonces are read before the logs, so a transaction mined in between is seen in the logs."""
        client = self.ctx.market.client
        w3 = client.w3
        attempt = dict(row.timings.get(OPEN_ATTEMPT) or {})
        me = to_checksum_address(self.ctx.address)
        latest = int(w3.eth.get_transaction_count(me, "latest"))
        pending = int(w3.eth.get_transaction_count(me, "pending"))
        tx = attempt.get("tx")
        status, tx_pending = None, False
        if tx:
            try:
                status = int(w3.eth.get_transaction_receipt(tx)["status"])
            except TransactionNotFound:
                try:
                    tx_pending = w3.eth.get_transaction(tx)["blockNumber"] is None
                except TransactionNotFound:
                    tx_pending = False
        start = int(attempt.get("from_block", client.deployment.block))
        event = client.market.events.JobOpened()
        logs = event.get_logs(from_block=start, argument_filters={"requester": me})
        entry = next((lg for lg in logs if self._is_attempt_of(row, attempt, lg)), None)
        facts = OpeningFacts(matched="0x" + bytes(entry["args"]["jobId"]).hex() if entry else None,
                             attempt="salt" in attempt, nonce=attempt.get("nonce"), tx=tx, receipt_status=status,
                             tx_pending=tx_pending, latest_nonce=latest, pending_nonce=pending)
        return facts, entry

    def _is_attempt_of(self, row: JobRow, attempt: dict[str, Any], lg: Any) -> bool:
        """Whether a JobOpened log is the job this row's openJob opened. With the recorded salt: exactly, since
        its id is keccak(requester, salt, block). A row recorded before salts were kept: same spec hash, a job
        no other row knows, and the winners are bids this announcement chose (provider and price)."""
        args = lg["args"]
        job_id = bytes(args["jobId"])
        if "salt" in attempt:
            return job_id_for(self.ctx.address, b32(attempt["salt"]), int(lg["blockNumber"])) == job_id
        if "0x" + bytes(args["specHash"]).hex() != row.spec_hash.lower():
            return False
        if any(r.job_id == "0x" + job_id.hex() for r in self.ctx.store.jobs() if r.job_id):
            return False
        chosen = {((b["provider"] or "").lower(), str(b["price"])) for b in self.ctx.store.bids(row.ann_id)
                  if b["status"] == "chosen"}
        return all((a["provider"].lower(), str(int(a["price"]))) in chosen for a in args["workers"])

    def _adopt(self, row: JobRow, lg: Any) -> str:
        """Record a recovered job in its row, with its winners (peers from the bids received), as "open"."""
        store = self.ctx.store
        args = lg["args"]
        hex_id = "0x" + bytes(args["jobId"]).hex()
        peers = {(b["provider"] or "").lower(): b["peer"] for b in store.bids(row.ann_id)}
        winners = [Winner(index=i, provider=a["provider"], peer=peers.get(a["provider"].lower(), ""),
                          price=int(a["price"]), collateral=int(a["collateral"]))
                   for i, a in enumerate(args["workers"])]
        out_dir = row.out_dir or str(default_out_dir(hex_id))
        with contextlib.suppress(Exception):  # the gas figure is a nicety; the job is recovered without it
            receipt = self.ctx.market.client.w3.eth.get_transaction_receipt(lg["transactionHash"])
            store.merge_json(row.ann_id, "gas", {"open": int(receipt["gasUsed"])})
        store.update_job(row.ann_id, job_id=hex_id, state="open", winners=[w.to_json() for w in winners],
                         out_dir=out_dir, error=None)
        self.ctx.progress(f"announcement {row.ann_id[:10]}: recovered job {hex_id} from its JobOpened log")
        return hex_id

    def load_session(self, row: JobRow) -> JobSession:
        """Rebuild a job's session from the store and the chain (runs in a worker thread; not started)."""
        assert row.job_id is not None
        spec_json = Path(row.spec_path or "").read_bytes()
        spec = parse_spec(json.loads(spec_json), source=row.spec_path or "spec")
        view = self.ctx.market.job(b32(row.job_id))
        job = view.job
        session = JobSession(self.ctx, ann_id=row.ann_id, job_id=b32(row.job_id), spec=spec, spec_json=spec_json,
                             k=row.k, deadline=job.deadline if job else 0, window=int(row.announcement["window"]),
                             winners=[Winner.from_json(w) for w in row.winners],
                             out_dir=Path(row.out_dir or f"result-{row.job_id[2:10]}"), t0=row.created_at)
        for i, c in self.ctx.store.commits(row.job_id).items():
            sig = c["sig"]
            session.commits[i] = (i, b32(c["commitment"]), int(sig["v"]), b32(sig["r"]), b32(sig["s"]))
        session.commits_posted = len(session.commits) == session.k and all(
            view.committed_mask >> i & 1 for i in session.commits)
        for i, r in self.ctx.store.reveals(row.job_id).items():
            session.reveals[i] = (i, b32(r["result"]), b32(r["salt"]))
            session.reveal_refs[i] = (r["result"], r["outputs"])
        return session
