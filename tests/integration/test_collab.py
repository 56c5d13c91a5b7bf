"""Collaborative training end to end: real anvil, a real bootstrap node, real provider nodes (`agora node run`,
real torch in their sandboxes) and a real requester (`agora collab run`), each in its own process, talking libp2p
on 127.0.0.1, settling once on CollabMarket.

Honest nodes h1, h2, h3 (1.0, 1.1, 1.5 tokens per accepted round) run for the module. The poisoner ("liar": a
real node whose updates are pushed 1000x away from the global model, tests/integration/_adversary.py) and the
provider that gets SIGKILLed ("victim") start only in their tests, priced 0.5 so the ranking picks them.
Every test reads what was paid from the contract and checks it against what the report says was accepted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("trio")

from _market_procs import MarketNet  # noqa: E402

from marketplace.blobs import BlobStore  # noqa: E402
from marketplace.client import ChainClient  # noqa: E402
from marketplace.collab.contract import CollabContract  # noqa: E402
from marketplace.collab.spec import load_collab_spec  # noqa: E402
from marketplace.devstack import NodeProc, wait_until  # noqa: E402
from marketplace.tensors import load_tensors  # noqa: E402
from marketplace.types import to_wei  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PRICES = {"h1": "1.0", "h2": "1.1", "h3": "1.5"}
CHEAP = "0.5"
ROUNDS = 4
ROUND_SECONDS = 25  # the round deadline: only a dead or late participant makes a round last this long


@pytest.fixture(scope="module")
def net(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketNet]:
    n = MarketNet.create(anvil.rpc_url, tmp_path_factory.mktemp("collab"))
    try:
        n.start_bootstrap()
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def honest(net: MarketNet) -> dict[str, NodeProc]:
    nodes = {name: net.node(name, price, prices={"collab": price}) for name, price in PRICES.items()}
    for node in nodes.values():
        node.launch()
    for node in nodes.values():
        node.wait_ready()
    for node in nodes.values():
        wait_until(lambda node=node: node.get("/health")["peers"] >= 2, 60, f"{node.name} to find peers")
    return nodes


def start_extra(net: MarketNet, name: str, adversary: str | None = None) -> NodeProc:
    node = net.node(name, CHEAP, adversary=adversary, prices={"collab": CHEAP})
    node.start()
    wait_until(lambda: node.get("/health")["peers"] >= 3, 60, f"{name} to connect to the others")
    return node


def collab_spec(net: MarketNet, name: str, *, robust: bool = False) -> Path:
    """The example collab spec (made by scripts/make_examples.py in the net's set-up), shortened for a test."""
    src = net.tmp / "specs" / "collab" / ("mlp-collab-robust.yaml" if robust else "mlp-collab.yaml")
    doc = yaml.safe_load(src.read_text())
    doc["rounds"] = ROUNDS
    doc["participants"] = 3
    doc["checks"]["round_seconds"] = ROUND_SECONDS
    out = net.tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def collab_argv(net: MarketNet, spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "marketplace.cli", "collab", "run", str(spec), "--max-price", "2",
            "--bid-window", "4", "--claim-window", "120", "--bootstrap", net.bootstrap, "--out", str(out),
            "--account", "alice", "--json"]


def finish(net: MarketNet, proc: subprocess.Popen[str], name: str, timeout: float = 400) -> dict[str, Any]:
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{name} timed out\n{net.log_tail(name)}") from None
    assert proc.returncode == 0, f"{name} exited {proc.returncode}: {stdout}\n{net.log_tail(name)}"
    return json.loads(stdout)


def chain(net: MarketNet) -> CollabContract:
    return CollabContract(ChainClient(net.market.client.w3, net.market.client.deployment))


def balances(net: MarketNet) -> dict[str, int]:
    c = chain(net)
    return {name: c.balance(addr) for name, addr in net.addresses.items()}


def by_name(net: MarketNet, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = {a.lower(): n for n, a in net.addresses.items()}
    return {names[p["provider"].lower()]: p for p in report["participants"]}


def final_accuracy(net: MarketNet, spec_path: Path, model_file: Path) -> float:
    from marketplace.examples import collab_test_blobs
    from node.runtime.collab import evaluate_accuracy

    spec = load_collab_spec(spec_path)
    store = BlobStore(Path(net.env["AGORA_HOME"]) / "blobs")
    ids = collab_test_blobs()
    x = load_tensors(store.get_bytes(ids["inputs"]))
    y = load_tensors(store.get_bytes(ids["labels"]))
    return evaluate_accuracy(spec.model, load_tensors(model_file.read_bytes()), x, y)


def assert_settled(net: MarketNet, report: dict[str, Any], before: dict[str, int]) -> None:
    """The chain paid each participant exactly count x price, and recorded the report's model hash."""
    view = chain(net).job(bytes.fromhex(report["job_id"][2:]))
    assert view.phase == "Settled"
    assert "0x" + bytes(view.model_hash).hex() == report["model_hash"]
    after = balances(net)
    for name, p in by_name(net, report).items():
        assert after[name] - before[name] == p["count"] * int(p["price"]), name
        assert view.counts[p["index"]] == p["count"]
    assert view.paid == sum(p["count"] * int(p["price"]) for p in report["participants"])


def test_three_providers_converge_and_settle(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    spec = collab_spec(net, "collab-honest")
    before = balances(net)
    report = finish(net, net.requester(collab_argv(net, spec, net.tmp / "out-honest"), "collab-honest"),
                    "collab-honest")
    parts = by_name(net, report)
    assert set(parts) == {"h1", "h2", "h3"}
    assert len(report["rounds"]) == ROUNDS
    for r in report["rounds"]:
        assert len(r["accepted"]) == 3 and not r["rejected"] and not r["missing"], r
    assert all(p["count"] == ROUNDS for p in parts.values())
    assert_settled(net, report, before)
    # every participant recomputed every aggregate itself and found the coordinator's
    for node in honest.values():
        job = next(j for j in node.jobs() if j.get("kind") == "collab" and j["job_id"] == report["job_id"])
        assert job["state"] in ("done", "paid") and job["receipt_count"] == ROUNDS, job
        assert job["rounds_verified"] == ROUNDS, job
    acc = final_accuracy(net, spec, Path(report["model_file"]))
    assert acc >= 0.75, acc


def test_poisoned_update_rejected(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    liar = start_extra(net, "liar", adversary="poison-update")
    try:
        spec = collab_spec(net, "collab-poison", robust=True)
        before = balances(net)
        report = finish(net, net.requester(collab_argv(net, spec, net.tmp / "out-poison"), "collab-poison"),
                        "collab-poison")
    finally:
        liar.stop(signal.SIGTERM)
    parts = by_name(net, report)
    assert "liar" in parts and len(parts) == 3
    for r in report["rounds"]:
        reasons = [x["reason"] for x in r["rejected"] if x["provider"] == net.addresses["liar"]]
        assert len(reasons) == 1 and reasons[0].startswith("norm"), r
        assert len(r["accepted"]) == 2
    assert parts["liar"]["count"] == 0 and parts["liar"]["rejected"] == list(range(1, ROUNDS + 1))
    assert_settled(net, report, before)
    assert balances(net)["liar"] == before["liar"]
    assert final_accuracy(net, spec, Path(report["model_file"])) >= 0.75


def test_killed_provider_not_paid_for_missed_rounds(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    victim = start_extra(net, "victim")
    spec = collab_spec(net, "collab-kill")
    before = balances(net)
    proc = net.requester(collab_argv(net, spec, net.tmp / "out-kill"), "collab-kill")

    def receipted() -> bool:  # its first update was accepted (fetched and checked) and receipted
        jobs = [j for j in victim.jobs() if j.get("kind") == "collab"]
        return bool(jobs) and jobs[0]["receipt_count"] >= 1

    wait_until(receipted, 240, "the victim's first accepted round")
    victim.stop(signal.SIGKILL)
    report = finish(net, proc, "collab-kill")
    parts = by_name(net, report)
    assert "victim" in parts
    v = parts["victim"]
    assert 1 <= v["count"] < ROUNDS and v["missed"], v
    assert v["count"] + len(v["missed"]) + len(v["rejected"]) == ROUNDS
    others = [p for n, p in parts.items() if n != "victim"]
    assert all(p["count"] == ROUNDS for p in others)
    assert_settled(net, report, before)
    assert balances(net)["victim"] - before["victim"] == v["count"] * to_wei(CHEAP)


def test_requester_vanishes_providers_claim_with_receipts(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    """The requester is SIGKILLed after two receipted rounds and never settles: after the job's deadline every
    node claims by itself with its latest receipt, and after the claim window anyone closes the job and the
    requester gets back exactly the escrow nobody earned. Payments never get stuck."""
    spec = collab_spec(net, "collab-vanish")
    before = balances(net)
    proc = net.requester(collab_argv(net, spec, net.tmp / "out-vanish"), "collab-vanish")

    def collab_jobs() -> list[dict[str, Any]]:
        return [j for n in honest.values() for j in n.jobs() if j.get("kind") == "collab"
                and j["state"] == "running"]

    def two_receipts() -> list[dict[str, Any]] | None:
        jobs = collab_jobs()
        return jobs if len(jobs) == 3 and all(j["receipt_count"] >= 2 for j in jobs) else None

    jobs = wait_until(two_receipts, 240, "two receipted rounds on every node")
    proc.kill()
    proc.wait(30)
    job_id = jobs[0]["job_id"]
    c = chain(net)
    view = c.job(bytes.fromhex(job_id[2:]))
    assert view.phase == "Open" and view.paid == 0  # never settled
    net.travel_to(view.deadline + 1)

    def all_claimed() -> Any:
        v = c.job(bytes.fromhex(job_id[2:]))
        return v if all(n >= 2 for n in v.counts) else None

    view = wait_until(all_claimed, 120, "every node to claim its receipts")
    names = {a.lower(): n for n, a in net.addresses.items()}
    after = balances(net)
    for i, provider in enumerate(view.providers):
        name = names[provider.lower()]
        assert after[name] - before[name] == view.counts[i] * view.prices[i], name
    assert view.paid == sum(n * p for n, p in zip(view.counts, view.prices, strict=True))
    assert view.counts[0] <= ROUNDS and view.phase == "Open"
    net.travel_to(view.deadline + view.claim_window + 1)
    # anyone may close; alice does here (a fresh client: her requester processes used nonces since set-up)
    alice = CollabContract(net.market.client.with_account(net.market.client.account))
    refund_before = alice.balance(net.addresses["alice"])
    alice.close(bytes.fromhex(job_id[2:]))
    closed = alice.job(bytes.fromhex(job_id[2:]))
    assert closed.phase == "Closed"
    assert alice.balance(net.addresses["alice"]) - refund_before == closed.escrow - closed.paid > 0
