"""The README's main command: `scripts/demo.py` runs the whole market (chain, bootstrap, three provider nodes,
a requester) in separate processes and every job settles with verified outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

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
        assert s["outcome"] == "completed" and s["outputsVerified"], job
        assert len(job["winners"]) == (3 if job["label"].endswith("k=3") else 1)
    assert int(report["jobs"][0]["settlement"]["paidMask"]) == 7
    assert set(report["exit_codes"].values()) == {0}  # every node and the bootstrap exit 0 on SIGTERM
    spent = -int(report["token_delta_wei"]["alice"]) - int(report["market_delta_wei"]["alice"])
    earned = sum(int(report["token_delta_wei"][p]) + int(report["market_delta_wei"][p]) for p in report["providers"])
    paid = sum(int(w["price"]) for j in report["jobs"] for w in j["winners"])
    assert spent == earned == paid  # every token alice paid reached a provider, and nothing else moved
