"""The requester's SQLite store: jobs by announcement id, job id or prefix; bids; commits; reveals; results."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from marketplace.requester.store import RequesterStore, store_path

ANN, JOB = "0x" + "1" * 64, "0x" + "ab" * 32
ADDR = "0x" + "c" * 40


def make(tmp_path: Path) -> RequesterStore:
    s = RequesterStore(store_path(tmp_path, ADDR))
    s.add_job(ann_id=ANN, announcement={"type": "announce"}, spec_hash="0x" + "2" * 64, spec_path="spec.json", k=2,
              max_price=10**18)
    return s


def test_path_layout_and_wal(tmp_path: Path) -> None:
    s = make(tmp_path)
    assert s.path == tmp_path / "requester" / "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC" / "requester.db"
    mode = sqlite3.connect(s.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_job_lifecycle_and_lookup(tmp_path: Path) -> None:
    s = make(tmp_path)
    assert s.job(ANN).state == "announced"  # type: ignore[union-attr]
    s.update_job(ANN, job_id=JOB, state="open", winners=[{"index": 0}], explanation={"ok": True})
    s.merge_json(ANN, "timings", {"a": 1.0})
    s.merge_json(ANN, "timings", {"b": 2.0})
    s.merge_json(ANN, "gas", {"open": 123})
    row = s.job(JOB.upper().replace("0X", "0x"))
    assert row is not None and row.state == "open" and row.winners == [{"index": 0}]
    assert row.timings == {"a": 1.0, "b": 2.0} and row.gas == {"open": 123} and row.max_price == 10**18
    assert s.job(JOB[:10]) is not None and s.job("0xdeadbeef") is None
    assert [r.ann_id for r in s.jobs(unfinished=True)] == [ANN]
    s.update_job(ANN, state="settled")
    assert s.jobs(unfinished=True) == [] and len(s.jobs()) == 1
    with pytest.raises(ValueError):
        s.update_job(ANN, state="bogus")
    with pytest.raises(ValueError):
        s.update_job(ANN, announcement="x")


def test_bids_commits_reveals_results_persist(tmp_path: Path) -> None:
    s = make(tmp_path)
    bid = s.add_bid(ann_id=ANN, provider=ADDR, peer="16Uiu", price=5, collateral=7, status="received", code=None,
                    reason="", offer={"type": "bid"})
    s.set_bid_status(bid, "chosen", "chosen: cheapest")
    s.add_commit(JOB, 1, "0x" + "3" * 64, {"v": 27})
    s.add_reveal(JOB, 1, "0x" + "4" * 64, "0x" + "5" * 64, [{"name": "manifest.json"}], "16Uiu")
    s.mark_posted("commits", JOB, [1])
    s.add_result(JOB, "0x" + "6" * 64, {"v": 28}, [], "16Uiu", "rejected", "hash differs")
    s.close()
    again = RequesterStore(s.path)  # a restart sees everything
    (b,) = again.bids(ANN)
    assert (b["status"], b["reason"], b["price"], b["offer"]) == ("chosen", "chosen: cheapest", "5", {"type": "bid"})
    assert again.commits(JOB) == {1: {"commitment": "0x" + "3" * 64, "sig": {"v": 27}, "posted": True}}
    assert again.reveals(JOB)[1]["outputs"] == [{"name": "manifest.json"}]
    res = again.result(JOB)
    assert res is not None and res["status"] == "rejected" and res["sig"] == {"v": 28}
