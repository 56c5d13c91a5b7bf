"""The whole market end to end: real anvil, a real bootstrap node, real provider nodes and a real requester,
each in its own process, talking libp2p on 127.0.0.1 and settling on chain.

One fresh deployment for the module. A bootstrap node and three honest providers (h1 1.0, h2 1.1, h3 1.5
tokens per inference) run for the whole module; adversaries (tests/integration/_adversary.py: a real node with
one patched misbehaviour) and the providers that get SIGKILLed start only in their tests, priced 0.5 (0.3) so
that the ranking (price / reputation) picks them. Chain deadlines are reached by moving anvil's clock, never by
sleeping. Every test asserts balances, registry numbers and outcomes read from the chain.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("trio")

from _market_procs import COLLATERAL, SETTLE_MARGIN_S, MarketNet, delta  # noqa: E402

from marketplace.devstack import NodeProc, wait_until  # noqa: E402
from marketplace.results import verify_result_dir  # noqa: E402
from marketplace.types import to_wei  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PRICES = {"h1": "1.0", "h2": "1.1", "h3": "1.5"}
CHEAP = "0.5"
COLL = to_wei(COLLATERAL)


@pytest.fixture(scope="module")
def net(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketNet]:
    n = MarketNet.create(anvil.rpc_url, tmp_path_factory.mktemp("market"))
    try:
        n.start_bootstrap()
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def honest(net: MarketNet) -> dict[str, NodeProc]:
    """h1, h2, h3: honest nodes shared by the module (started in parallel)."""
    nodes = {name: net.node(name, price) for name, price in PRICES.items()}
    for node in nodes.values():
        node.launch()
    for node in nodes.values():
        node.wait_ready()
    for node in nodes.values():  # in the mesh before the first announcement
        wait_until(lambda node=node: node.get("/health")["peers"] >= 2, 60, f"{node.name} to find peers")
    return nodes


def start_extra(net: MarketNet, name: str, price: str, adversary: str | None = None) -> NodeProc:
    node = net.node(name, price, adversary=adversary)
    node.start()
    wait_until(lambda: node.get("/health")["peers"] >= 4, 60, f"{name} to connect to the others")
    return node


def winners(net: MarketNet, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job's winners by actor name (index, price, ...), from the requester's JSON."""
    names = {a: n for n, a in net.addresses.items()}
    return {names[w["provider"]]: w for w in out["winners"]}


def settlement(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "settlement.json").read_text())


def assert_outputs_verified(out_dir: Path, result: str) -> None:
    """The requester's output folder holds outputs whose canonical hash is the settled result."""
    assert "0x" + verify_result_dir(out_dir).root.hex() == result.lower()


def drive_replicated(net: MarketNet, job_id: str, honest_nodes: list[NodeProc], *,
                     also_committed: int = 0, in_reveal_window: Callable[[], Any] | None = None) -> tuple[Any, Any]:
    """Take a k >= 2 job with a missing / misbehaving participant to settlement by moving chain time: into the
    nodes' commit fallback, past the deadline and into the reveal fallback, past the window. Returns the job's
    chain view just before the final step (commitments and openings still readable) and the settled view."""
    view = net.job(job_id)
    deadline, window = view.job.deadline, view.job.window
    rows = [n.wait_job(job_id=job_id, states=("computed", "committed", "revealed", "settled"), timeout=120)
            for n in honest_nodes]
    honest_bits = sum(1 << int(r["idx"]) for r in rows)
    bits = honest_bits | also_committed
    net.travel_to(deadline - SETTLE_MARGIN_S + 1)
    wait_until(lambda: net.job(job_id).committed_mask & bits == bits, 60, "the commitments on chain")
    net.travel_to(deadline + window - SETTLE_MARGIN_S + 1)
    wait_until(lambda: net.job(job_id).revealed_mask & honest_bits == honest_bits, 60, "the honest openings")
    if in_reveal_window is not None:  # chain time stays in the nodes' reveal fallback window meanwhile
        wait_until(in_reveal_window, 60, "the reveal-window condition")
    before_end = net.job(job_id)
    net.travel_to(deadline + window + 4)
    return before_end, net.wait_settled(job_id)


def test_k3_inference_settles_and_every_honest_provider_is_paid(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    before = net.balances()
    out_dir = net.tmp / "out-k3"
    res = net.run_requester(net.submit_argv(k=3, max_price="2", out=out_dir))
    assert res.rc == 0, res.stderr
    assert res.out["state"] == "settled"
    won = winners(net, res.out)
    assert set(won) == {"h1", "h2", "h3"}
    s = settlement(out_dir)
    assert s["outcome"] == "completed" and int(s["paidMask"]) == 7 and int(s["slashedMask"]) == 0
    assert s["outputsVerified"] is True
    assert_outputs_verified(out_dir, s["result"])
    after = net.balances()
    for name in won:
        assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
        assert delta(before, after, name, "stake") == 0 and after[name]["locked"] == 0
    assert delta(before, after, "alice", "total") == -sum(to_wei(PRICES[n]) for n in won)
    assert net.job(res.out["job_id"]).settled


def test_a_wrong_result_is_outvoted_and_slashed(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    liar = start_extra(net, "liar", CHEAP, adversary="wrong-result")
    try:
        before = net.balances()
        out_dir = net.tmp / "out-liar"
        res = net.run_requester(net.submit_argv(k=3, max_price="2", out=out_dir))
        won = winners(net, res.out)
        assert set(won) == {"liar", "h1", "h2"}, res.out.get("explanation")
        assert res.rc == 0, res.stderr
        s = settlement(out_dir)
        liar_bit = 1 << int(won["liar"]["index"])
        assert s["outcome"] == "completed"
        assert int(s["paidMask"]) == 7 & ~liar_bit and int(s["slashedMask"]) == liar_bit
        assert_outputs_verified(out_dir, s["result"])
        row = liar.wait_job(job_id=res.out["job_id"], states=("settled",))
        assert row["result"] != s["result"] and row["outcome"] == "completed:slashed"
        after = net.balances()
        for name in ("h1", "h2"):
            assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
            assert delta(before, after, name, "stake") == 0 and delta(before, after, name, "slashed") == 0
        assert delta(before, after, "liar", "mbal") == 0 and delta(before, after, "liar", "token") == 0
        assert delta(before, after, "liar", "stake") == -COLL and delta(before, after, "liar", "slashed") == 1
        # alice paid the two honest prices; the liar's price came back plus its collateral as compensation
        assert delta(before, after, "alice", "total") == -(to_wei(PRICES["h1"]) + to_wei(PRICES["h2"])) + COLL
        assert int(s["refund"]) == to_wei(CHEAP) and int(s["compensation"]) == COLL
    finally:
        liar.stop(signal.SIGTERM)


def test_a_copied_commitment_cannot_win(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    copier = start_extra(net, "copier", CHEAP, adversary="copy-commitment")
    try:
        before = net.balances()
        out_dir = net.tmp / "out-copier"
        proc = net.requester(net.submit_argv(k=3, max_price="2", out=out_dir))
        row = copier.wait_job(timeout=120)
        job_id, mine = row["job_id"], int(row["idx"])
        # its own reveal attempt (the node's fallback, by chain time) must revert on chain
        reverted = lambda: "MarketCommitmentMismatch" in copier.log_tail(200_000)  # noqa: E731
        view, _ = drive_replicated(net, job_id, [honest["h1"], honest["h2"]], also_committed=1 << mine,
                                   in_reveal_window=reverted)
        res = net.finish(proc)
        assert res.rc == 0, res.stderr
        won = winners(net, res.out)
        assert set(won) == {"copier", "h1", "h2"}
        # the copier did commit: the very commitment of another participant; the chain refused its opening
        assert view.commitments[mine] in [c for i, c in view.commitments.items() if i != mine]
        s = settlement(out_dir)
        bit = 1 << mine
        assert s["outcome"] == "completed" and int(s["paidMask"]) == 7 & ~bit and int(s["slashedMask"]) == bit
        assert_outputs_verified(out_dir, s["result"])
        assert not view.revealed_mask & bit
        assert "the reveal does not open your commitment" in copier.log_tail(200_000)  # the requester refused it
        after = net.balances()
        for name in ("h1", "h2"):
            assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
        assert delta(before, after, "copier", "mbal") == 0
        assert delta(before, after, "copier", "stake") == -COLL and delta(before, after, "copier", "slashed") == 1
        assert delta(before, after, "alice", "total") == -(to_wei(PRICES["h1"]) + to_wei(PRICES["h2"])) + COLL
    finally:
        copier.stop(signal.SIGTERM)


def test_a_provider_killed_after_assignment_is_slashed_and_the_others_paid(net: MarketNet,
                                                                          honest: dict[str, NodeProc]) -> None:
    victim = start_extra(net, "victim", CHEAP)
    before = net.balances()
    out_dir = net.tmp / "out-victim"
    since = net.last_bid_id()
    proc = net.requester(net.submit_argv(k=3, max_price="2", out=out_dir))
    job_id = net.kill_after_assignment(victim, since)
    pre, _ = drive_replicated(net, job_id, [honest["h1"], honest["h2"]])
    res = net.finish(proc)
    assert res.rc == 0, res.stderr
    won = winners(net, res.out)
    assert set(won) == {"victim", "h1", "h2"}
    bit = 1 << int(won["victim"]["index"])
    assert not pre.committed_mask & bit and not pre.revealed_mask & bit  # it died before committing
    s = settlement(out_dir)
    assert s["outcome"] == "completed" and int(s["paidMask"]) == 7 & ~bit and int(s["slashedMask"]) == bit
    assert_outputs_verified(out_dir, s["result"])
    after = net.balances()
    for name in ("h1", "h2"):
        assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
    assert delta(before, after, "victim", "mbal") == 0
    assert delta(before, after, "victim", "stake") == -COLL and delta(before, after, "victim", "slashed") == 1
    assert delta(before, after, "alice", "total") == -(to_wei(PRICES["h1"]) + to_wei(PRICES["h2"])) + COLL


def test_the_only_provider_killed_after_assignment_expires_the_job(net: MarketNet,
                                                                   honest: dict[str, NodeProc]) -> None:
    lone = start_extra(net, "lone", "0.3")
    before = net.balances()
    out_dir = net.tmp / "out-lone"
    since = net.last_bid_id()
    proc = net.requester(net.submit_argv(k=1, max_price="2", out=out_dir))
    job_id = net.kill_after_assignment(lone, since)
    view = net.job(job_id)
    net.travel_to(view.job.deadline + 4)
    view = net.wait_settled(job_id)
    res = net.finish(proc)
    assert res.rc == 4  # the job did not produce a result
    assert set(winners(net, res.out)) == {"lone"}
    assert view.outcome is not None and view.outcome.name.lower() == "expired"
    s = settlement(out_dir)
    assert s["outcome"] == "expired" and int(s["slashedMask"]) == 1 and int(s["paidMask"]) == 0
    after = net.balances()
    assert delta(before, after, "lone", "mbal") == 0
    assert delta(before, after, "lone", "stake") == -COLL and delta(before, after, "lone", "slashed") == 1
    # refunded in full, plus the collateral
    assert delta(before, after, "alice", "total") == COLL
    for name in PRICES:
        assert delta(before, after, name, "mbal") == 0


def test_a_node_killed_after_committing_reveals_after_restart_and_is_paid(net: MarketNet,
                                                                          honest: dict[str, NodeProc]) -> None:
    before = net.balances()
    out_dir = net.tmp / "out-restart"
    proc = net.requester(net.submit_argv(k=3, max_price="2", out=out_dir))
    h1 = honest["h1"]
    row = wait_until(lambda: next((j for j in h1.jobs() if j["state"] == "committed" and j["replicas"] == 3
                                   and not j.get("outcome")), None), 120, "h1 to commit", every=0.05)
    h1.stop(signal.SIGKILL)
    job_id = row["job_id"]
    assert not net.job(job_id).revealed_mask >> int(row["idx"]) & 1  # not revealed before the kill
    h1.start()
    wait_until(lambda: h1.get("/health")["peers"] >= 2, 60, "h1 to rejoin")
    res = net.finish(proc)
    assert res.rc == 0, res.stderr
    assert set(winners(net, res.out)) == {"h1", "h2", "h3"}
    s = settlement(out_dir)
    assert s["outcome"] == "completed" and int(s["paidMask"]) == 7
    assert_outputs_verified(out_dir, s["result"])
    settled = h1.wait_job(job_id=job_id, states=("settled",))
    assert settled["outcome"] == "completed:paid" and settled["earnings"] == str(to_wei(PRICES["h1"]))
    after = net.balances()
    for name in PRICES:
        assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
    assert delta(before, after, "alice", "total") == -sum(to_wei(p) for p in PRICES.values())


def test_no_acceptable_bids_says_why_and_locks_nothing(net: MarketNet, honest: dict[str, NodeProc]) -> None:
    before = net.balances()
    opened = net.opened_events()
    declined = {n: node.metric("agora_declines_total", reason="price") for n, node in honest.items()}
    res = net.run_requester(net.submit_argv(k=1, max_price="0.1", out=net.tmp / "out-none", grace=0.05))
    assert res.rc == 1
    assert res.out["state"] == "no-bids"
    assert res.out["error"].startswith("no acceptable bids")
    assert not any(b.get("chosen") for b in res.out["explanation"]["bids"])
    for name, node in honest.items():  # every node saw the job and declined it for its price
        wait_until(lambda node=node, name=name: node.metric("agora_declines_total", reason="price")
                   > declined[name], 30, f"{name} to decline on price")
    assert res.out["explanation"]["summary"] == res.out["error"]
    # the nodes counter-offered at their own prices, so the requester can say exactly why none was acceptable
    assert "ask more than max price 0.1" in res.out["error"], res.out["error"]
    refused = [b for b in res.out["explanation"]["bids"] if b.get("refusal")]
    assert refused and all(b["refusal"] == "price" for b in refused)
    assert "no acceptable bids" in res.stderr  # the one-line error users see
    assert net.balances() == before
    assert net.opened_events() == opened


def opened_job_ids(net: MarketNet) -> set[str]:
    return {r[0] for r in net.requester_db("SELECT job_id FROM jobs WHERE job_id IS NOT NULL")}


@pytest.mark.parametrize("how", ["no-wait", "sigkill"])
def test_a_restarted_requester_collects_its_result(net: MarketNet, honest: dict[str, NodeProc], how: str) -> None:
    """`submit` without --wait (exits once the job is open), or `submit --wait` SIGKILLed as soon as its database
    shows the job opened (frozen first, so it serves nothing more): `agora job resume` later finishes the job."""
    before = net.balances()
    out_dir = net.tmp / f"out-resume-{how}"
    known = opened_job_ids(net)
    if how == "no-wait":
        res = net.run_requester(net.submit_argv(k=1, max_price="2", out=out_dir, wait=False))
        assert res.rc == 0, res.stderr
        assert res.out["state"] == "open"
        job_id = res.out["job_id"]
        (name,) = winners(net, res.out)
    else:
        proc = net.requester(net.submit_argv(k=1, max_price="2", out=out_dir))
        new = wait_until(lambda: opened_job_ids(net) - known, 120, "the job to open", every=0.02)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
        (job_id,) = new
        view = net.job(job_id)
        (name,) = [n for n, a in net.addresses.items() if a == view.job.workers[0].provider]
    node = honest[name]
    # The node was assigned; with the requester gone it can neither fetch inputs nor deliver a result.
    assert node.wait_job(job_id=job_id, timeout=60)["state"] in ("assigned", "running", "computed")
    assert not net.job(job_id).settled
    resumed = net.run_requester([sys.executable, "-m", "marketplace.cli", "job", "resume", job_id, "--timeout",
                                 "180", "--bootstrap", net.bootstrap, "--account", "alice", "--json"],
                                name=f"resume-{how}")
    assert resumed.rc == 0, resumed.stderr
    view = net.wait_settled(job_id)
    assert view.outcome is not None and view.outcome.name.lower() == "completed"
    s = settlement(out_dir)
    assert s["outcome"] == "completed" and s["outputsVerified"] is True
    assert_outputs_verified(out_dir, s["result"])
    after = net.balances()
    assert delta(before, after, name, "mbal") == to_wei(PRICES[name])
    assert delta(before, after, "alice", "total") == -to_wei(PRICES[name])
