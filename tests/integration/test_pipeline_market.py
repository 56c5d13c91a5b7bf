"""Pipelines over the real market: anvil, `agora p2p bootstrap`, an `agora node run` provider (real torch in its
sandbox) and `agora pipeline run` as separate processes on 127.0.0.1.

The shipped examples/pipelines/mlp-train-evaluate.yaml runs against the example blobs (scripts/make_examples.py
makes the same blob ids everywhere): (a) to completion; (b) SIGKILLed once its second stage's job is open, then
run again; (c) invalid pipelines are refused before any transaction. Everything asserted comes from the chain,
the requester's database, the pipeline's state file and the verified output folders; nothing on timing.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("trio")

from _market_procs import ROOT, MarketNet, delta  # noqa: E402

from marketplace.blobs import BlobStore  # noqa: E402
from marketplace.devchain import rpc_call  # noqa: E402
from marketplace.devstack import NodeProc, wait_until  # noqa: E402
from marketplace.results import verify_result_dir  # noqa: E402
from marketplace.tensors import load_tensors  # noqa: E402
from marketplace.types import to_wei  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PIPELINE = ROOT / "examples" / "pipelines" / "mlp-train-evaluate.yaml"
PRICES = {"train": "1", "evaluate": "0.5", "inference": "0.5"}
STAGE_COST = {"train": to_wei(PRICES["train"]), "evaluate": to_wei(PRICES["evaluate"])}


@pytest.fixture(scope="module")
def net(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketNet]:
    n = MarketNet.create(anvil.rpc_url, tmp_path_factory.mktemp("pipeline"))
    try:
        n.start_bootstrap()
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def provider(net: MarketNet) -> NodeProc:
    """h1 serving train, evaluate and inference."""
    node = net.node("h1", PRICES["train"], prices=PRICES)
    node.start()
    wait_until(lambda: node.get("/health")["peers"] >= 1, 60, "h1 to join the network")
    return node


def run_argv(net: MarketNet, pipeline: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "marketplace.cli", "pipeline", "run", str(pipeline), "--state", str(state),
            "--store", str(net.tmp / "home" / "blobs"), "--bootstrap", net.bootstrap, "--account", "alice", "--json"]


def read_state(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def nonce(net: MarketNet) -> int:
    return int(rpc_call(net.rpc, "eth_getTransactionCount", [net.addresses["alice"], "latest"]), 16)


def spec_of(net: MarketNet, ann_id: str) -> dict[str, Any]:
    """The canonical spec the requester announced (and served) for an announcement."""
    (path,) = net.requester_db("SELECT spec_path FROM jobs WHERE ann_id = ?", ann_id)[0]
    return dict(json.loads(Path(path).read_text()))


def assert_stage_verified(stage: dict[str, Any], record: dict[str, Any]) -> None:
    """The stage's output folder verifies against the result hash that settled on chain."""
    out_dir = Path(record["out_dir"])
    assert "0x" + verify_result_dir(out_dir).root.hex() == stage["result_hash"].lower()
    settled = json.loads((out_dir / "settlement.json").read_text())
    assert settled["outcome"] == "completed" and settled["outputsVerified"] is True
    assert settled["result"].lower() == stage["result_hash"].lower()


def test_invalid_pipelines_are_refused_before_any_transaction(net: MarketNet) -> None:
    spec_dir = ROOT / "examples" / "specs"
    cycle = {"version": 1, "name": "bad-cycle", "budget": 10, "stages": {
        "a": {"spec": str(spec_dir / "mlp-finetune.yaml"), "override": {"model": {"weights": "${b.weights}"}}},
        "b": {"spec": str(spec_dir / "mlp-finetune.yaml"), "override": {"model": {"weights": "${a.weights}"}}}}}
    pricey = {"version": 1, "name": "bad-budget", "budget": 1, "defaults": {"max_price": 2},
              "stages": {"train": {"spec": str(spec_dir / "mlp-train.yaml")}}}
    before, n0, opened = net.balances()["alice"], nonce(net), net.opened_events()
    for doc, says in ((cycle, "error: cycle: a -> b -> a"),
                      (pricey, "error: stage train: max price 2 x 1 replica(s) = 2 AGORA exceeds the budget 1 AGORA")):
        path = net.tmp / f"{doc['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        res = net.run_requester(run_argv(net, path, net.tmp / f"state-{doc['name']}"), name=doc["name"])
        assert res.rc == 2, res.stderr
        assert says in res.stderr
        assert res.out["valid"] is False and res.out["problems"]
        assert not (net.tmp / f"state-{doc['name']}").exists()  # refused before even a state directory
    assert nonce(net) == n0
    assert net.balances()["alice"] == before
    assert net.opened_events() == opened


def test_mlp_pipeline_runs_to_completion(net: MarketNet, provider: NodeProc) -> None:
    before, opened = net.balances(), net.opened_events()
    state = net.tmp / "state-a"
    res = net.run_requester(run_argv(net, PIPELINE, state), timeout=400, name="pipeline-a")
    assert res.rc == 0, res.stderr
    report = res.out
    assert report["ok"] is True and [s["name"] for s in report["stages"]] == ["train", "evaluate"]
    stages = {s["name"]: s for s in report["stages"]}
    records = read_state(state)["stages"]
    for name, s in stages.items():
        assert s["status"] == "done" and s["job_id"] and net.job(s["job_id"]).settled
        assert_stage_verified(s, records[name])
        assert int(s["cost"]) == STAGE_COST[name]
    # The evaluate job was announced with the train stage's weights blob, which holds the parameters only.
    weights = stages["train"]["outputs"]["weights"]
    assert spec_of(net, records["evaluate"]["ann_id"])["model"]["weights"] == weights
    params = load_tensors(BlobStore(net.tmp / "home" / "blobs").get_bytes(weights))
    assert sorted(params) == ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]
    assert 0.0 <= stages["evaluate"]["metrics"]["accuracy"] <= 1.0
    after = net.balances()
    assert int(report["total_cost"]) == sum(STAGE_COST.values())
    assert delta(before, after, "alice", "token") == -int(report["total_cost"])
    assert delta(before, after, "alice", "mbal") == 0
    assert delta(before, after, "h1", "mbal") == sum(STAGE_COST.values())
    assert net.opened_events() == opened + 2
    status = net.run_requester([sys.executable, "-m", "marketplace.cli", "pipeline", "status", str(state), "--json"],
                               name="status-a")
    assert status.rc == 0 and status.out["total_cost"] == report["total_cost"]


def test_interrupted_pipeline_resumes_without_paying_twice(net: MarketNet, provider: NodeProc) -> None:
    before, opened = net.balances(), net.opened_events()
    state = net.tmp / "state-b"
    first = net.requester(run_argv(net, PIPELINE, state), name="pipeline-b1")

    def evaluate_open() -> bool:
        st = read_state(state).get("stages", {})
        if first.poll() is not None:
            raise AssertionError(f"the pipeline exited ({first.returncode}) before it could be interrupted")
        return bool(st) and st["train"]["status"] == "done" and st["evaluate"]["status"] in ("open", "done")

    wait_until(evaluate_open, 300, "train done and the evaluate job opened", every=0.02)
    first.send_signal(signal.SIGSTOP)  # serves nothing more from here
    first.send_signal(signal.SIGKILL)
    first.wait(20)
    killed = read_state(state)["stages"]
    assert killed["train"]["status"] == "done" and killed["evaluate"]["job_id"]
    second = net.run_requester(run_argv(net, PIPELINE, state), timeout=400, name="pipeline-b2")
    assert second.rc == 0, second.stderr
    stages = {s["name"]: s for s in second.out["stages"]}
    assert all(s["status"] == "done" for s in stages.values())
    # The finished stage was kept, the opened job was resumed: same job ids, one JobOpened per stage.
    assert stages["train"]["job_id"] == killed["train"]["job_id"]
    assert stages["evaluate"]["job_id"] == killed["evaluate"]["job_id"]
    assert net.opened_events() == opened + 2
    records = read_state(state)["stages"]
    for s in stages.values():
        assert_stage_verified(s, records[s["name"]])
    after = net.balances()
    assert delta(before, after, "alice", "total") == -sum(STAGE_COST.values())
    assert delta(before, after, "h1", "mbal") == sum(STAGE_COST.values())
    assert int(second.out["total_cost"]) == sum(STAGE_COST.values())


def test_a_failed_stage_with_an_open_job_is_resumed_not_bought_again(net: MarketNet, provider: NodeProc) -> None:
    """The state says `failed` (as a transient RPC error after the job opened leaves it) while the evaluate job is
    open on chain: the rerun looks at the job, waits for it, and pays for it once."""
    from marketplace.pipeline.state import atomic_write_json

    before, opened = net.balances(), net.opened_events()
    state = net.tmp / "state-c"
    first = net.requester(run_argv(net, PIPELINE, state), name="pipeline-c1")

    def evaluate_open() -> bool:
        st = read_state(state).get("stages", {})
        if first.poll() is not None:
            raise AssertionError(f"the pipeline exited ({first.returncode}) before it could be interrupted")
        return bool(st) and st["train"]["status"] == "done" and st["evaluate"]["status"] == "open"

    wait_until(evaluate_open, 300, "train done and the evaluate job opened", every=0.02)
    first.send_signal(signal.SIGSTOP)
    first.send_signal(signal.SIGKILL)
    first.wait(20)
    doc = read_state(state)
    job = doc["stages"]["evaluate"]["job_id"]
    assert job
    doc["stages"]["evaluate"].update(status="failed", error="RPC stopped answering during job: ReadTimeout")
    atomic_write_json(state / "state.json", doc)
    second = net.run_requester(run_argv(net, PIPELINE, state), timeout=400, name="pipeline-c2")
    assert second.rc == 0, second.stderr
    stages = {s["name"]: s for s in second.out["stages"]}
    assert stages["evaluate"]["status"] == "done" and stages["evaluate"]["job_id"] == job
    assert read_state(state)["stages"]["evaluate"]["attempts"] == []
    assert net.opened_events() == opened + 2
    after = net.balances()
    assert delta(before, after, "alice", "total") == -sum(STAGE_COST.values())
    assert int(second.out["total_cost"]) == sum(STAGE_COST.values())
