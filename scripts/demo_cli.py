#!/usr/bin/env python3
"""The whole job lifecycle, by hand, with the real `agora` CLI against a real local chain.

Starts Anvil (or --ganache / --hardhat), deploys, imports the public dev keys into keystores, registers three
providers, then runs a k = 1 job (bid, open, submit, accept) and a k = 3 job (bids, open, commit, reveal, one
provider lying) and prints who paid whom. Every step is an `agora ...` subprocess, exactly what a user types.

Usage: python scripts/demo_cli.py [--ganache | --hardhat] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from marketplace.devchain import LocalChain
from marketplace.types import from_wei

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["deployer", "alice", "prov1", "prov2", "prov3"]  # dev accounts 0..4


class Cli:
    def __init__(self, env: dict[str, str], verbose: bool) -> None:
        self.env = env
        self.verbose = verbose
        self.agora = [sys.executable, "-m", "marketplace.cli"]

    def __call__(self, *args: str, account: str | None = None, want_json: bool = False) -> dict | list | str:
        argv = [*self.agora, *args]
        if account:
            argv += ["--account", account]
        if want_json:
            argv.append("--json")
        shown = "agora " + " ".join(a if len(a) < 48 else a[:20] + "…" for a in argv[3:])
        if self.verbose:
            print(f"  $ {shown}", flush=True)
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, cwd=self.env["DEMO_CWD"])
        if proc.returncode != 0:
            raise SystemExit(f"demo step failed: {shown}\n{proc.stderr.strip()}")
        return json.loads(proc.stdout) if want_json else proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--ganache", action="store_true")
    kind.add_argument("--hardhat", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the final report as JSON")
    args = ap.parse_args(argv)
    chain_kind = "ganache" if args.ganache else "hardhat" if args.hardhat else "anvil"
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="agora-demo-") as tmp, LocalChain(chain_kind) as chain:
        tmpdir = Path(tmp)
        env = {**os.environ, "AGORA_RPC": chain.rpc_url, "AGORA_HOME": str(tmpdir / "home"),
               "AGORA_DEPLOYMENTS": str(tmpdir / "deployments"), "AGORA_PASSWORD": "demo-password",
               "DEMO_CWD": str(tmpdir)}
        agora = Cli(env, verbose=not args.json)
        say = (lambda *_: None) if args.json else print
        say(f"== {chain_kind} on {chain.rpc_url}; deploying")
        dep = agora("deploy", want_json=True)
        say("== importing dev keys into keystores")
        addr = {}
        for i, name in enumerate(NAMES):
            keyfile = tmpdir / f"{name}.key"
            keyfile.write_text(chain.dev_private_keys[i] + "\n")
            agora("wallet", "import", name, "--private-key-file", str(keyfile))
            keyfile.unlink()
            addr[name] = agora("wallet", "address", name, want_json=True)["address"]
        provs = ["prov1", "prov2", "prov3"]
        say("== providers register with 500 AGORA stake")
        for p in provs:
            agora("provider", "register", "--stake", "500", "--peer-id", "0x0025" + os.urandom(37).hex(),
                  "--approve", account=p)
        before = {n: agora("token", "balance", addr[n], want_json=True) for n in NAMES}

        say("== k = 1: prov1 bids, alice opens with the bid, prov1 submits, alice accepts")
        spec1 = "0x" + os.urandom(32).hex()
        agora("bid", "sign", "--spec-hash", spec1, "--requester", addr["alice"], "--price", "5",
              "--collateral", "20", "--out", str(tmpdir / "bid1.json"), account="prov1")
        job1 = agora("job", "open", "--spec-hash", spec1, "--bid", str(tmpdir / "bid1.json"), "--approve",
                     account="alice", want_json=True)["job_id"]
        agora("provider", "submit", job1, "0x" + "ab" * 32, account="prov1")
        agora("job", "accept", job1, account="alice")

        say("== k = 3: three bids; prov3 lies; commit, reveal, majority settles")
        spec3 = "0x" + os.urandom(32).hex()
        bid_files = []
        for p in provs:
            f = tmpdir / f"bid3-{p}.json"
            agora("bid", "sign", "--spec-hash", spec3, "--requester", addr["alice"], "--price", "3",
                  "--collateral", "30", "--out", str(f), account=p)
            bid_files += ["--bid", str(f)]
        job3 = agora("job", "open", "--spec-hash", spec3, *bid_files, "--approve", account="alice",
                     want_json=True)["job_id"]
        results = {"prov1": "0x" + "cd" * 32, "prov2": "0x" + "cd" * 32, "prov3": "0x" + "ee" * 32}
        for p in provs:
            agora("provider", "commit", job3, results[p], account=p)
        for p in provs:
            agora("provider", "reveal", job3, account=p)
        status3 = agora("job", "status", job3, want_json=True)

        say("== everyone withdraws their market balance")
        for n in ["alice", *provs]:
            bal = agora("token", "balance", addr[n], want_json=True)
            if int(bal["market_balance_wei"]) > 0:
                agora("withdraw", account=n)
        after = {n: agora("token", "balance", addr[n], want_json=True) for n in NAMES}
        status1 = agora("job", "status", job1, want_json=True)
        infos = {p: agora("provider", "info", addr[p], want_json=True) for p in provs}

    moves = {n: int(after[n]["token_wei"]) - int(before[n]["token_wei"]) for n in NAMES}
    report = {"chain": chain_kind, "deployment": dep, "jobs": {"k1": status1, "k3": status3},
              "token_delta_wei": {n: str(v) for n, v in moves.items()},
              "reputation": {p: {k: infos[p][k] for k in ("jobs_done", "jobs_failed", "times_slashed", "score_bps")}
                             for p in provs},
              "seconds": round(time.time() - t0, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("\n== who paid whom")
    print(f"  job {job1[:10]}… k=1: alice paid prov1 5 AGORA ({status1['status']})")
    s3 = status3["settlement"]
    print(f"  job {job3[:10]}… k=3: {status3['status']}, paid mask {s3['paidMask']:#05b}, slashed mask "
          f"{s3['slashedMask']:#05b}; alice refunded {from_wei(int(s3['refund']))} + compensated "
          f"{from_wei(int(s3['compensation']))} AGORA from prov3's collateral")
    print(f"\n  {'account':<10}{'token change':>16}   {'jobs done/failed/slashed':<26}{'score':>8}")
    for n in NAMES:
        rep = report["reputation"].get(n)
        extra = (f"{rep['jobsDone']}/{rep['jobsFailed']}/{rep['timesSlashed']}".ljust(26)
                 + f"{int(rep['scoreBps']) / 100:>7.2f}%") if rep else ""
        print(f"  {n:<10}{from_wei(moves[n]):>16}   {extra}")
    print(f"\n  (stakes stay bonded in the registry; total demo time {report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
