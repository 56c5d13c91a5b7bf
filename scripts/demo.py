#!/usr/bin/env python3
"""The whole market on one machine: a chain, a bootstrap node, three provider nodes and a requester.

Starts Anvil, deploys, imports dev keys into keystores, then starts in separate processes a bootstrap node
(`agora p2p bootstrap`) and three provider nodes (`agora node run`, each with its own price table). The requester
then buys compute with `agora job submit ... --wait`, exactly as a user would:

- a k = 3 replicated inference job (the three results must agree on chain),
- a k = 1 training job (the cheapest reputable provider wins),
- a k = 1 evaluation job,
- a pipeline (`agora pipeline run examples/pipelines/mlp-train-evaluate.yaml`): train, then evaluate the trained
  weights, under one budget,
- a collaborative training job (`agora collab run`, examples/collab/mlp-collab.yaml with the three providers):
  rounds of federated averaging, paid per accepted round in one settlement,

and the demo prints a settlement table (job, winners, price, gas, latency, outcome), each provider's earnings,
then stops every process cleanly (SIGTERM) and exits.

Usage: python scripts/demo.py [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from marketplace.devchain import LocalChain
from marketplace.devstack import CliError, LocalStack
from marketplace.types import from_wei

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["deployer", "alice", "prov1", "prov2", "prov3"]  # dev accounts 0..4
PROVIDERS = {  # name -> (price table in tokens, collateral); collab: per accepted round
    "prov1": ({"inference": "1.0", "train": "4.0", "evaluate": "1.0", "finetune": "4.0", "collab": "0.2"}, "5"),
    "prov2": ({"inference": "1.2", "train": "3.0", "evaluate": "1.5", "finetune": "3.0", "collab": "0.3"}, "5"),
    "prov3": ({"inference": "1.5", "train": "6.0", "evaluate": "0.8", "finetune": "6.0", "collab": "0.25"}, "5"),
}
COLLAB_ROUNDS = 5
JOBS = [  # (label, spec, replicas, max price per replica)
    ("inference k=3", "examples/specs/mlp-inference.yaml", 3, "2"),
    ("train k=1", "examples/specs/mlp-train.yaml", 1, "5"),
    ("evaluate k=1", "examples/specs/mlp-evaluate.yaml", 1, "2"),
]


def agora(stack: LocalStack, *args: str, account: str | None = None, quiet: bool = False) -> Any:
    """One `agora ... --json` step, echoed as the user would type it; the demo stops if it fails."""
    if not quiet:
        shown = " ".join(a if len(a) < 60 else a[:24] + "…" for a in args)
        print(f"  $ agora {shown}" + (f" --account {account}" if account else ""), flush=True)
    try:
        return stack.cli(*args, account=account)
    except CliError as err:
        raise SystemExit(f"demo step failed: {err}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the final report as JSON only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = ap.parse_args(argv)
    say = (lambda *_a, **_k: None) if args.json else print
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="agora-demo-"))
    try:
        with LocalChain("anvil") as chain:
            stack = LocalStack.create(chain.rpc_url, tmp, password="demo-password")
            try:
                report = run_demo(stack, chain, say, quiet=args.json)
                say("\n== stopping nodes (SIGTERM)")
            finally:
                codes = stack.close()
            report["exit_codes"] = codes
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if args.keep:
            print(f"  (logs and databases kept in {tmp})")
    return 0 if all(c == 0 for c in report["exit_codes"].values()) else 1


def run_demo(stack: LocalStack, chain: LocalChain, say: Any, quiet: bool) -> dict[str, Any]:
    tmp = stack.tmp
    say(f"== anvil on {chain.rpc_url}; deploying")
    dep = agora(stack, "deploy", quiet=quiet)
    say("== importing dev keys into keystores")
    addr = stack.import_keys({name: chain.dev_private_keys[i] for i, name in enumerate(NAMES)})
    say("== example datasets and weights into alice's blob store")
    stack.make_examples()

    say("== bootstrap node")
    try:
        bootstrap = stack.start_bootstrap(120)
    except RuntimeError as err:
        raise SystemExit(f"demo: {err}") from None
    say(f"   {bootstrap}")
    say("== three provider nodes (each registers with 100 AGORA stake)")
    for name, (prices, collateral) in PROVIDERS.items():
        try:
            node = stack.start_node(name, {"prices": prices, "collateral": collateral, "stake": "100",
                                           "capacity": 2, "ops_port": 0, "auto_withdraw": "1"}, 300)
        except RuntimeError as err:
            raise SystemExit(f"demo: {err}") from None
        say(f"   {name} {node.ready['address']}  peer {node.ready['peer_id'][:16]}…  ops {node.ready.get('ops')}")
    before = {n: agora(stack, "token", "balance", addr[n], quiet=True) for n in NAMES}

    results = []
    for label, spec, k, max_price in JOBS:
        say(f"\n== {label}: {spec}, max price {max_price} AGORA per replica")
        spec_path = tmp / "specs" / Path(spec).name
        started = time.time()
        out = agora(stack, "job", "submit", str(spec_path), "--replicas", str(k), "--max-price", max_price,
                    "--bootstrap", bootstrap, "--approve", "--wait", "--out", str(tmp / "results" / label.split()[0]),
                    account="alice", quiet=quiet)
        out["label"] = label
        out["wall_s"] = round(time.time() - started, 2)
        results.append(out)
        say(f"   {out.get('explanation', {}).get('summary', '')}")
        if (out.get("settlement") or {}).get("outcome") != "completed":
            raise SystemExit(f"demo: {label} did not complete: {out.get('error') or out.get('settlement')}")
    pipeline = run_pipeline(stack, bootstrap, say, quiet)
    collab = run_collab(stack, bootstrap, say, quiet)
    time.sleep(2)  # let auto-withdraw transactions land
    after = {n: agora(stack, "token", "balance", addr[n], quiet=True) for n in NAMES}
    collab_after = {n: agora(stack, "collab", "balance", addr[n], quiet=True) for n in NAMES}
    moves = {n: int(after[n]["token_wei"]) - int(before[n]["token_wei"]) for n in NAMES}
    market = {n: int(after[n]["market_balance_wei"]) - int(before[n]["market_balance_wei"]) for n in NAMES}
    return {"deployment": dep, "providers": {n: addr[n] for n in PROVIDERS}, "jobs": results,
            "pipeline": pipeline, "collab": collab,
            "token_delta_wei": {n: str(v) for n, v in moves.items()},
            "market_delta_wei": {n: str(v) for n, v in market.items()},
            "collab_delta_wei": {n: collab_after[n]["collab_balance_wei"] for n in NAMES}, "addresses": addr}


def run_pipeline(stack: LocalStack, bootstrap: str, say: Any, quiet: bool) -> dict[str, Any]:
    """The example pipeline (train, then evaluate the trained weights), its specs beside it as in the repo."""
    tmp = stack.tmp
    src = ROOT / "examples" / "pipelines" / "mlp-train-evaluate.yaml"
    (tmp / "pipelines").mkdir(exist_ok=True)
    pipe = tmp / "pipelines" / src.name
    pipe.write_text(src.read_text())  # `spec: ../specs/...` resolves to the specs made in tmp/specs
    say(f"\n== pipeline: {src.relative_to(ROOT)}")
    started = time.time()
    out = agora(stack, "pipeline", "run", str(pipe), "--state", str(tmp / "pipeline-state"), "--approve",
                "--bootstrap", bootstrap, account="alice", quiet=quiet)
    out["wall_s"] = round(time.time() - started, 2)
    for st in out.get("stages", []):
        say(f"   stage {st['name']}: {st['status']}, job {str(st['job_id'])[:10]}, cost {st['cost_tokens']} AGORA, "
            f"outputs {', '.join(st['outputs'])}" + "".join(f", {k} {v:.3f}" for k, v in st["metrics"].items()))
    if not out.get("ok"):
        raise SystemExit(f"demo: the pipeline did not complete: {out}")
    return out


def run_collab(stack: LocalStack, bootstrap: str, say: Any, quiet: bool) -> dict[str, Any]:
    """The example collaborative job, shortened to COLLAB_ROUNDS rounds over the three providers."""
    import yaml

    tmp = stack.tmp
    doc = yaml.safe_load((tmp / "specs" / "collab" / "mlp-collab.yaml").read_text())
    doc.update(participants=len(PROVIDERS), rounds=COLLAB_ROUNDS)
    spec = tmp / "collab-demo.yaml"
    spec.write_text(yaml.safe_dump(doc))
    say(f"\n== collaborative training: examples/collab/mlp-collab.yaml, {len(PROVIDERS)} providers, "
        f"{COLLAB_ROUNDS} rounds")
    started = time.time()
    out = agora(stack, "collab", "run", str(spec), "--max-price", "0.5", "--bootstrap", bootstrap,
                "--out", str(tmp / "results" / "collab"), account="alice", quiet=quiet)
    out["wall_s"] = round(time.time() - started, 2)
    for r in out["rounds"]:
        say(f"   round {r['round']}: {len(r['accepted'])} accepted, {len(r['rejected'])} rejected, "
            f"{r['wall_s']:.2f} s, model {r['aggregate'][:19]}…")
    return out


def print_report(report: dict[str, Any]) -> None:
    names = {v: k for k, v in report["addresses"].items()}
    print("\n== settlement")
    print(f"  {'job':<15}{'winners':<22}{'price':>8}{'gas':>10}{'latency':>10}  outcome")
    for job in report["jobs"]:
        s = job.get("settlement") or {}
        winners = ",".join(names.get(w["provider"], w["provider"][:8]) for w in job.get("winners", []))
        price = sum(int(w["price"]) for w in job.get("winners", []))
        gas = sum(int(g) for g in s.get("gas", {}).values())
        lat = float(s.get("timings", {}).get("settled_s", job["wall_s"]))
        verified = "outputs verified" if s.get("outputs_verified") else "outputs NOT verified"
        print(f"  {job['label']:<15}{winners:<22}{from_wei(price):>8}{gas:>10,}{lat:>9.2f}s  "
              f"{s.get('outcome', job.get('state', '?'))}, {verified}")
    print("  (latency: from the announcement to the outputs verified against the settled hash, bid window included)")
    pipe = report.get("pipeline")
    if pipe:
        print(f"\n== pipeline {pipe.get('pipeline')}: " + ", ".join(
            f"{st['name']} {st['cost_tokens']} AGORA" + "".join(f" ({k} {v:.3f})" for k, v in st["metrics"].items())
            for st in pipe["stages"]) + f"; {pipe['wall_s']} s")
    collab = report.get("collab")
    if collab:
        paid = ", ".join(f"{names.get(p['provider'], p['provider'][:8])} {p['count']} x {from_wei(int(p['price']))}"
                         for p in collab["participants"])
        print(f"== collaborative training: {len(collab['rounds'])} rounds ({collab['rule']}), paid {paid} in one "
              f"settlement (gas {collab['gas'].get('settle', 0):,}); final model {collab['model'][:23]}…; "
              f"{collab['wall_s']} s")
    print(f"\n  {'account':<10}{'tokens':>14}{'in market':>12}{'in collab':>12}")
    for n in NAMES:
        print(f"  {n:<10}{from_wei(int(report['token_delta_wei'][n])):>14}"
              f"{from_wei(int(report['market_delta_wei'][n])):>12}{from_wei(int(report['collab_delta_wei'][n])):>12}")
    print(f"\n  exit codes {report['exit_codes']}; total demo time {report['seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
