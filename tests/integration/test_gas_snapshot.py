"""Gas regression guard: every settlement path measured on a real Anvil (scripts/bench_gas.py's scenarios, with
the committed snapshot's parameters and seed) must stay within 2% of `snapshots/gas.json`.

After a change that legitimately moves gas, record a new snapshot with
`python scripts/bench_gas.py --write-snapshot snapshots/gas.json` and commit it with the change.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = REPO / "snapshots" / "gas.json"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gas", REPO / "scripts" / "bench_gas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_names_each_path_over_the_tolerance() -> None:
    bench = _bench()
    snap = {"params": {}, "tolerance": 0.02, "gas": {"a": 100_000, "b": 50_000, "per_job.k1_direct": 200_000}}
    report = {"steps_mean_gas": {"a": 102_000, "b": 51_001}, "per_job_gas": {"k1_direct": 150_000}}
    problems = bench.compare(snap, report)
    assert len(problems) == 1 and problems[0].startswith("b: 51,001 gas, +2.00%"), problems
    assert bench.compare(snap, {"steps_mean_gas": {"a": 1}, "per_job_gas": {}}) == [
        "b: not measured any more (snapshot 50,000)", "per_job.k1_direct: not measured any more (snapshot 200,000)"]


def test_gas_within_two_percent_of_snapshot() -> None:
    bench = _bench()
    snap = json.loads(SNAPSHOT.read_text())
    assert snap["tolerance"] == 0.02 and snap["gas"], snap
    params = snap["params"]
    report = bench.measure(params["jobs"], params["batch"], params["seed"])
    problems = bench.compare(snap, report)
    assert not problems, "gas rose over snapshots/gas.json:\n" + "\n".join(problems)
