#!/usr/bin/env python3
"""Workflows over the real market: collaborative training for m = 1, 2, 4 and pipeline orchestration overhead.

    python scripts/bench_workflows.py --out workflows.json [--rounds 10] [--repeats 3] [--ms 1,2,4]

Set-up (like scripts/bench_market.py's market section): one Anvil chain, `agora deploy`, one
`agora p2p bootstrap`, four `agora node run` processes serving train / evaluate / collab, and an in-process
requester (the Python API behind `agora collab run` and `agora pipeline run`). Every process shares this
machine's cores.

- **collab**: the example job `examples/collab/mlp-collab.yaml` (10 classes, 32 features, 4,000 training
  samples, mlp 32-64-10, fedavg, 2 local epochs a round) with `participants` = m. Per m: wall time of the job
  (announcement to settlement), round time, communication volume per round (update blobs fetched by the
  coordinator + blobs served to participants: models, and the updates each participant downloads to recompute
  the aggregate), final accuracy on the 1,000-sample held-out set, gas. `collab_accuracy_gap_points` is
  accuracy(m=1) - accuracy(m=4) in points.
- **expected speed-up with one machine per provider**: here the m providers share 2 cores, so the measured round
  time does not show what m machines would do. The estimate uses figures measured in the same run:
  round(m) = compute(shard of N/m samples, measured alone, no other load) + aggregation(m) + coordination
  (round time minus compute at m = 1: messages, fetches, sandbox hand-off) + transfer(bytes per provider per
  round at 1 Gbit/s). speed-up(m) = round(1) / round(m).
- **pipeline**: examples/pipelines/mlp-train-evaluate.yaml run by `run_pipeline` (validate, state on disk, one
  requester, stages as their inputs settle) against the same two stages submitted back to back by hand through
  one `Requester` (submit --wait, split the outputs into blobs, submit the next). Alternating, `--repeats`
  times each; `pipeline_overhead_pct` = (median pipeline - median by hand) / median by hand x 100. Target <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marketplace.devstack import LocalStack  # noqa: E402
from marketplace.examples import collab_test_blobs  # noqa: E402

LINK_BYTES_PER_S = 125e6  # 1 Gbit/s: a LAN between provider machines
HEAVY_EPOCHS = 20  # local epochs of the heavier round the speed-up is also estimated for
PROVIDERS = 4


def _say(quiet: bool) -> Any:
    return (lambda *_: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


class Net:
    """Chain, deployment, keys, example blobs, bootstrap and provider processes (see the module docstring)."""

    def __init__(self, tmp: Path, say: Any) -> None:
        from marketplace.devchain import LocalChain

        self.tmp, self.say = tmp, say
        self.chain = LocalChain("anvil").__enter__()
        self.stack = LocalStack.create(self.chain.rpc_url, tmp, password="bench", env={"PYTHONPATH": str(ROOT)})
        self.env = self.stack.env
        os.environ.update({k: self.env[k] for k in ("AGORA_RPC", "AGORA_HOME", "AGORA_DEPLOYMENTS",
                                                    "AGORA_PASSWORD")})

    def start(self) -> None:
        self.say("setup: deploying, importing keys, building example blobs")
        self.stack.deploy()
        names = ["requester"] + [f"prov{i}" for i in range(PROVIDERS)]
        self.stack.import_keys({name: self.chain.dev_private_keys[i] for i, name in enumerate(names, start=1)})
        self.stack.make_examples()
        self.bootstrap = self.stack.start_bootstrap()
        for i in range(PROVIDERS):
            prices = {"train": "1", "evaluate": "1", "collab": "0.1"}
            self.say(f"setup: starting provider {i}")
            self.stack.start_node(f"prov{i}", {"stake": "1000", "collateral": "1", "capacity": 2, "prices": prices,
                                               "kinds": sorted(prices), "ops_port": -1}, args=())

    def close(self) -> None:
        self.stack.close()
        self.chain.__exit__(None, None, None)


def _requester(tmp: Path) -> tuple[Any, Any, Any, Any]:
    from marketplace.blobs import BlobStore
    from marketplace.client import ChainClient
    from marketplace.config import load_settings
    from marketplace.market import Market
    from marketplace.requester import RequesterStore
    from marketplace.wallet import load_account

    settings = load_settings()
    account = load_account(account="requester", password_file=None, settings=settings)
    market = Market(ChainClient.open(settings.rpc_url, settings.deployments_dir, account=account))
    store = RequesterStore.for_account(settings.home, account.address)
    return market, store, BlobStore(tmp / "home" / "blobs"), None


def _fresh_key(tmp: Path) -> Any:
    """A new libp2p identity for each requester host this process opens. A host closed in-process can leave
    the nodes holding a half-open connection to its peer id for a liveness period (one connection per peer),
    so a second host with the SAME id, opened at once, may not reach them (a CLI process exiting closes its
    sockets and does not hit this)."""
    from marketplace.p2p import load_or_create_key

    return load_or_create_key(tmp / "keys" / f"{os.urandom(6).hex()}.key")


# ---------------------------------------------------------------------------------------------------- collab
def collab_section(net: Net, *, ms: list[int], rounds: int) -> dict[str, Any]:
    import trio

    from marketplace.collab.contract import CollabContract
    from marketplace.collab.coordinator import CollabCoordinator
    from marketplace.collab.spec import parse_collab_spec
    from marketplace.requester import Requester
    from marketplace.tensors import load_tensors
    from marketplace.types import to_wei
    from node.runtime.collab import evaluate_accuracy
    from node.sandbox import Sandbox

    market, store, blobs, _ = _requester(net.tmp)
    base = yaml.safe_load((net.tmp / "specs" / "collab" / "mlp-collab.yaml").read_text())
    test = collab_test_blobs()
    x_test = load_tensors(blobs.get_bytes(test["inputs"]))
    y_test = load_tensors(blobs.get_bytes(test["labels"]))
    runs: dict[int, dict[str, Any]] = {}

    def spec_for(m: int) -> Any:
        doc = dict(base, participants=m, rounds=rounds, min_participants=1)
        return parse_collab_spec(doc, source=f"collab m={m}")

    async def main() -> None:
        async with Requester.open(market, store=store, blobs=blobs, key=_fresh_key(net.tmp),
                                  bootstrap=[net.bootstrap],
                                  progress=lambda _m: None) as req:
            for m in ms:
                net.say(f"collab: m = {m}, {rounds} rounds")
                coord = CollabCoordinator(req, spec_for(m), CollabContract(market.client),
                                          out_dir=net.tmp / "collab" / f"m{m}", progress=lambda _m: None)
                t0 = time.perf_counter()
                report = await coord.run(max_price=to_wei(1), bid_window=3.0, claim_window=600)
                wall = time.perf_counter() - t0
                weights = load_tensors(Path(report["modelFile"]).read_bytes())
                acc = evaluate_accuracy(coord.spec.model, weights, x_test, y_test)
                rs = report["rounds"]
                runs[m] = {
                    "wall_s": round(wall, 3), "rounds": len(rs),
                    "round_s_median": round(statistics.median(r["wall_s"] for r in rs), 4),
                    "compute_s_median": round(statistics.median(max(r["compute_s"].values() or [0.0]) for r in rs), 4),
                    "aggregate_s_median": round(statistics.median(r["aggregate_s"] for r in rs), 4),
                    "bytes_per_round": report["bytesPerRound"],
                    "bytes_per_round_per_provider": round(report["bytesPerRound"] / m, 1),
                    "accepted_per_round": [len(r["accepted"]) for r in rs],
                    "accuracy": round(acc, 4), "gas": report["gas"], "paid": report["paid"],
                }
                net.say(f"collab: m = {m}: {wall:.1f} s, accuracy {acc:.4f}, "
                        f"{report['bytesPerRound']:,.0f} B/round")

    trio.run(main)
    # Compute alone, per shard size: what one dedicated machine per provider would spend on its shard; also for
    # a heavier round (HEAVY_EPOCHS local epochs) to show where the speed-up goes as compute grows.
    with Sandbox(blobs, workers_dir=net.tmp / "sandbox") as sandbox:
        alone = _alone(sandbox, spec_for, ms, net.tmp / "alone", blobs)
        heavy_spec = lambda m: spec_for(m).model_copy(  # noqa: E731
            update={"training": spec_for(m).training.model_copy(update={"epochs": HEAVY_EPOCHS})})
        alone_heavy = _alone(sandbox, heavy_spec, ms, net.tmp / "alone-heavy", blobs)
    coordination = max(0.0, runs[ms[0]]["round_s_median"] - alone[ms[0]])
    return {"runs": {str(m): r for m, r in runs.items()},
            "expected_dedicated": _expected(ms, alone, runs, coordination),
            "expected_dedicated_heavy": {"local_epochs": HEAVY_EPOCHS,
                                         **_expected(ms, alone_heavy, runs, coordination)},
            "dataset": {"train": 4000, "test": 1000, "classes": 10, "features": 32}}


def _alone(sandbox: Any, spec_for: Any, ms: list[int], out: Path, blobs: Any) -> dict[int, float]:
    """Median compute seconds of one round on the first shard of an m-way split, nothing else running."""
    from marketplace.collab.spec import make_shards
    from node.runtime.collab import train_round

    alone: dict[int, float] = {}
    spec1 = spec_for(1)
    for m in ms:
        shard = make_shards(spec_for(m), blobs, m)[0]
        times = [train_round(sandbox, spec1, str(spec1.model.weights), shard, out / f"{m}-{rep}").compute_s
                 for rep in range(3)]
        alone[m] = statistics.median(times)
    return alone


def _expected(ms: list[int], alone: dict[int, float], runs: dict[int, dict[str, Any]],
              coordination: float) -> dict[str, Any]:
    """Round time with one machine per provider: compute alone + aggregation + coordination + transfer."""
    expected: dict[str, Any] = {}
    for m in ms:
        transfer = runs[m]["bytes_per_round_per_provider"] / LINK_BYTES_PER_S
        est = alone[m] + runs[m]["aggregate_s_median"] + coordination + transfer
        expected[str(m)] = {"compute_alone_s": round(alone[m], 4), "aggregate_s": runs[m]["aggregate_s_median"],
                            "coordination_s": round(coordination, 4), "transfer_s_1gbit": round(transfer, 6),
                            "round_s": round(est, 4)}
    r1 = expected[str(ms[0])]["round_s"]
    for m in ms:
        expected[str(m)]["speedup"] = round(r1 / expected[str(m)]["round_s"], 3)
    return expected


# ---------------------------------------------------------------------------------------------------- pipeline
def pipeline_section(net: Net, *, repeats: int) -> dict[str, Any]:
    import trio

    from marketplace.pipeline.model import load_pipeline
    from marketplace.pipeline.runner import run_pipeline, split_outputs
    from marketplace.requester import Requester
    market, store, blobs, _ = _requester(net.tmp)
    src = ROOT / "examples" / "pipelines" / "mlp-train-evaluate.yaml"
    pipe_file = net.tmp / "pipelines" / src.name
    pipe_file.parent.mkdir(parents=True, exist_ok=True)
    (net.tmp / "specs").mkdir(exist_ok=True)
    pipe_file.write_text(src.read_text().replace("../specs/", str(net.tmp / "specs") + "/"))
    pipe = load_pipeline(pipe_file)
    order = ["train", "evaluate"]

    async def by_pipeline(n: int) -> float:
        t0 = time.perf_counter()
        report = await run_pipeline(pipe, market=market, store=store, blobs=blobs, key=_fresh_key(net.tmp),
                                    state_dir=net.tmp / "pstate" / str(n), bootstrap=[net.bootstrap], approve=True)
        wall = time.perf_counter() - t0
        if not report.ok:
            raise RuntimeError(f"pipeline run {n} failed: {report.to_json()}")
        return wall

    async def by_hand(n: int) -> float:
        t0 = time.perf_counter()
        outputs: dict[str, dict[str, str]] = {}
        async with Requester.open(market, store=store, blobs=blobs, key=_fresh_key(net.tmp),
                                  bootstrap=[net.bootstrap],
                                  progress=lambda _m: None) as req:
            await req.ensure_funds(sum(pipe.stages[s].reserve for s in order), approve=True)
            for name in order:
                stage = pipe.stages[name]
                spec = stage.resolve(outputs)
                out_dir = net.tmp / "hand" / str(n) / name
                outcome = await req.submit(spec, k=stage.replicas, max_price=stage.max_price,
                                           bid_window=stage.bid_window, grace=stage.grace, wait=True,
                                           out_dir=out_dir)
                if outcome.state != "settled":
                    raise RuntimeError(f"by hand: stage {name} ended {outcome.state}: {outcome.error}")
                assert stage.spec is not None
                outputs[name], _ = split_outputs(out_dir, stage.spec, blobs)
        return time.perf_counter() - t0

    pipe_s: list[float] = []
    hand_s: list[float] = []

    async def main() -> None:
        await by_hand(-1)  # warm-up: sandboxes, connections
        for n in range(repeats):
            first, second = (by_pipeline, by_hand) if n % 2 == 0 else (by_hand, by_pipeline)
            for fn in (first, second):
                wall = await fn(n)
                (pipe_s if fn is by_pipeline else hand_s).append(wall)
            net.say(f"pipeline: repeat {n + 1}/{repeats}: pipeline {pipe_s[-1]:.2f} s, by hand {hand_s[-1]:.2f} s")

    trio.run(main)
    p, h = statistics.median(pipe_s), statistics.median(hand_s)
    return {"pipeline_s": [round(x, 3) for x in pipe_s], "by_hand_s": [round(x, 3) for x in hand_s],
            "pipeline_median_s": round(p, 3), "by_hand_median_s": round(h, 3),
            "overhead_pct": round((p - h) / h * 100, 2), "stages": order}


# ---------------------------------------------------------------------------------------------------- main
def print_table(summary: dict[str, Any], collab: dict[str, Any] | None, pipeline: dict[str, Any] | None) -> None:
    rows: list[tuple[str, str, str]] = []
    if collab:
        for m, r in collab["runs"].items():
            rows.append((f"collab m={m}: wall time", f"{r['wall_s']:.1f} s ({r['rounds']} rounds, "
                         f"{r['round_s_median']:.2f} s/round)", "report"))
            rows.append((f"collab m={m}: communication per round", f"{r['bytes_per_round']:,.0f} B", "report"))
            rows.append((f"collab m={m}: final accuracy", f"{r['accuracy'] * 100:.2f} %", "report"))
        for m, e in collab["expected_dedicated"].items():
            rows.append((f"collab m={m}: expected round, one machine each", f"{e['round_s']:.3f} s "
                         f"(speed-up x{e['speedup']:.2f})", "report"))
        heavy = collab["expected_dedicated_heavy"]
        for m, e in heavy.items():
            if m == "local_epochs":
                continue
            rows.append((f"collab m={m}: the same, {heavy['local_epochs']} local epochs a round",
                         f"{e['round_s']:.3f} s (speed-up x{e['speedup']:.2f})", "report"))
        rows.append(("collab accuracy gap m=4 vs m=1", f"{summary['collab_accuracy_gap_points']:.2f} points",
                     "<= 1 point"))
    if pipeline:
        rows.append(("pipeline vs stages by hand", f"{pipeline['pipeline_median_s']:.2f} s vs "
                     f"{pipeline['by_hand_median_s']:.2f} s: {pipeline['overhead_pct']:+.1f} %", "<= 5 %"))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    print(f"{'figure':<{w}}  {'measured':<{v}}  target")
    for name, val, target in rows:
        print(f"{name:<{w}}  {val:<{v}}  {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON here")
    ap.add_argument("--rounds", type=int, default=10, help="collab rounds per run")
    ap.add_argument("--ms", default="1,2,4", help="participant counts, comma separated (first is the baseline)")
    ap.add_argument("--repeats", type=int, default=3, help="pipeline runs each way")
    ap.add_argument("--sections", default="collab,pipeline")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    say = _say(args.quiet)
    ms = [int(x) for x in args.ms.split(",")]
    sections = set(args.sections.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="agora-bench-workflows-"))
    net = Net(tmp, say)
    t0 = time.time()
    collab = pipeline = None
    try:
        net.start()
        if "collab" in sections:
            collab = collab_section(net, ms=ms, rounds=args.rounds)
        if "pipeline" in sections:
            if collab:
                # the collab section's requester host (same peer id) must be dropped by the nodes' liveness
                # checks before a new one connects: one connection per peer
                time.sleep(20)
            pipeline = pipeline_section(net, repeats=args.repeats)
    finally:
        net.close()
    summary: dict[str, Any] = {}
    if collab:
        runs = collab["runs"]
        first, last = str(ms[0]), str(ms[-1])
        summary["collab_accuracy_gap_points"] = round((runs[first]["accuracy"] - runs[last]["accuracy"]) * 100, 3)
        summary["collab_bytes_per_round"] = runs[last]["bytes_per_round"]
        summary["collab_bytes_per_round_by_m"] = {m: r["bytes_per_round"] for m, r in runs.items()}
        summary["collab_wall_s_by_m"] = {m: r["wall_s"] for m, r in runs.items()}
        summary["collab_accuracy_by_m"] = {m: r["accuracy"] for m, r in runs.items()}
        summary["collab_expected_speedup_by_m"] = {m: e["speedup"] for m, e in collab["expected_dedicated"].items()}
        summary["collab_expected_speedup_heavy_by_m"] = {
            m: e["speedup"] for m, e in collab["expected_dedicated_heavy"].items() if m != "local_epochs"}
    if pipeline:
        summary["pipeline_overhead_pct"] = pipeline["overhead_pct"]
    doc = {"summary": summary, "collab": collab, "pipeline": pipeline,
           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "elapsed_s": round(time.time() - t0, 1)}
    print_table(summary, collab, pipeline)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
