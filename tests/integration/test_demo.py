"""The README's main command: `scripts/demo.py` runs the whole market (chain, bootstrap, three provider nodes,
a requester) in separate processes and every job settles with verified outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_demo_settles_every_job_and_stops_cleanly() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--json"], capture_output=True,
                          text=True, timeout=540, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    labels = [j["label"] for j in report["jobs"]]
    assert labels == ["inference k=3", "train k=1", "evaluate k=1"]
    for job in report["jobs"]:
        s = job["settlement"]
        assert s["outcome"] == "completed" and s["outputs_verified"], job
        assert len(job["winners"]) == (3 if job["label"].endswith("k=3") else 1)
    assert int(report["jobs"][0]["settlement"]["paid_mask"]) == 7
    assert set(report["exit_codes"].values()) == {0}  # every node and the bootstrap exit 0 on SIGTERM
    pipe = report["pipeline"]
    assert pipe["ok"] and [s["name"] for s in pipe["stages"]] == ["train", "evaluate"]
    assert all(s["status"] == "done" and s["result_hash"] for s in pipe["stages"])
    assert pipe["stages"][1]["metrics"]["accuracy"] > 0.5  # the evaluated weights are the trained ones
    collab = report["collab"]
    assert len(collab["rounds"]) == 5 and all(len(r["accepted"]) == 3 for r in collab["rounds"])
    assert all(p["count"] == 5 for p in collab["participants"])

    def moved(who: str) -> int:
        return sum(int(report[k][who]) for k in ("token_delta_wei", "market_delta_wei", "collab_delta_wei"))

    spent = -moved("alice")
    earned = sum(moved(p) for p in report["providers"])
    paid = (sum(int(w["price"]) for j in report["jobs"] for w in j["winners"]) + int(pipe["total_cost"])
            + int(collab["paid"]))
    assert spent == earned == paid  # every token alice paid reached a provider, and nothing else moved
