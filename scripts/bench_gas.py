#!/usr/bin/env python3
"""Gas per step and per job for the market's settlement paths, measured on a real Anvil.

Usage: python scripts/bench_gas.py [--jobs 10] [--batch 21] [--seed N] [--out gas.json]
       python scripts/bench_gas.py --write-snapshot snapshots/gas.json   (record the committed gas snapshot)
       python scripts/bench_gas.py --check-snapshot snapshots/gas.json   (exit 1 if any path got >2% dearer)

Every figure is gasUsed from receipts, in steady state: the providers and requester have used the market
before (bid-nonce words and balances exist), and each provider withdraws its earnings once per `--jobs` jobs,
so one withdraw is amortized over that many jobs. Reference: iExec PoCo spends about 1.6-1.8M gas per task.

The snapshot (`snapshots/gas.json`) holds the gas of every step and per-job path measured with fixed
parameters and a fixed seed for every random input (spec hashes, salts, results), so a rerun measures the same
work; `compare` names each path whose gas rose more than the tolerance over it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict

from eth_account import Account

from marketplace.client import ChainClient, connect
from marketplace.deployer import deploy
from marketplace.devchain import LocalChain, time_travel
from marketplace.eip712 import sign_bid, sign_commit, sign_result
from marketplace.market import Market
from marketplace.types import Bid, JobParams, commitment_for, to_wei

TARGETS = {"k1_total_gas": 200_000, "k3_total_gas": 450_000, "batch_finalize_gas_per_job": 40_000}
IEXEC_PER_TASK = 1_700_000
SNAPSHOT_PARAMS = {"jobs": 4, "batch": 9, "seed": 20240601}
TOLERANCE = 0.02


class Bench:
    def __init__(self, chain: LocalChain, seed: int | None = None) -> None:
        self.chain = chain
        self.rng = random.Random(seed) if seed is not None else None
        w3 = connect(chain.rpc_url)
        accts = [Account.from_key(k) for k in chain.dev_private_keys]
        self.dep = deploy(w3, accts[0], fund=[a.address for a in accts])
        base = ChainClient(w3, self.dep)
        self.req = Market(base.with_account(accts[1]))
        self.provs = [Market(base.with_account(a)) for a in accts[2:8]]
        self.keys = {m.address: a for m, a in zip(self.provs, accts[2:8])}
        self.nonces: dict[str, int] = defaultdict(int)
        self.gas: dict[str, list[int]] = defaultdict(list)
        for p in self.provs:
            p.approve(self.dep.registry, to_wei(10_000))
            p.register(to_wei(5_000), b"\x00\x25" + self.rand(37), self.rand(32))
        self.req.approve(self.dep.market, 2**255)

    def rand(self, n: int) -> bytes:
        """n random bytes: from the seeded generator when there is one (reproducible runs), else os.urandom."""
        return self.rng.randbytes(n) if self.rng is not None else os.urandom(n)

    def bid(self, p: Market, spec: bytes):
        n = self.nonces[p.address]
        self.nonces[p.address] += 1
        b = Bid(spec_hash=spec, requester=self.req.address, provider=p.address, price=to_wei(1),
                collateral=to_wei(10), run_seconds=30, expiry=self.req.client.timestamp() + 3600, nonce=n)
        return sign_bid(self.keys[p.address], b, chain_id=self.dep.chain_id, market=self.dep.market)

    def open(self, tag: str, provs: list[Market]) -> bytes:
        spec = self.rand(32)
        params = JobParams(spec_hash=spec, salt=self.rand(32), deadline=self.req.client.timestamp() + 600,
                           window=60, replicas=len(provs))
        job_id, r = self.req.open_job(params, [self.bid(p, spec) for p in provs])
        self.gas[f"{tag}.open"].append(r.gas_used)
        return job_id

    def record(self, key: str, result) -> None:
        self.gas[key].append(result.gas_used)

    def withdraw_all(self, tag: str, provs: list[Market]) -> None:
        for p in provs:
            self.record(f"{tag}.withdraw", p.withdraw())

    # --------------------------------------------------------------- scenarios
    def k1_direct(self, n: int) -> None:
        p = self.provs[0]
        for _ in range(n):
            jid = self.open("k1", [p])
            self.record("k1.submit", p.submit_result(jid, self.rand(32)))
            self.record("k1.accept", self.req.accept(jid))
        self.withdraw_all("k1", [p])

    def k1_relayed(self, n: int) -> None:
        p = self.provs[1]
        for _ in range(n):
            jid = self.open("k1r", [p])
            res = self.rand(32)
            sig = sign_result(self.keys[p.address], jid, res, chain_id=self.dep.chain_id, market=self.dep.market)
            self.record("k1r.acceptSignedResult", self.req.accept_signed_result(jid, res, sig))
        self.withdraw_all("k1r", [p])

    def k3_direct(self, n: int) -> None:
        provs = self.provs[:3]
        for _ in range(n):
            jid = self.open("k3", provs)
            res, salts = self.rand(32), [self.rand(32) for _ in provs]
            for i, p in enumerate(provs):
                self.record("k3.commit", p.commit(jid, i, commitment_for(jid, p.address, res, salts[i])))
            for i, p in enumerate(provs):
                self.record("k3.reveal" if i < 2 else "k3.reveal+settle", p.reveal(jid, i, res, salts[i]))
        self.withdraw_all("k3", provs)

    def k3_batched(self, n: int) -> None:
        provs = self.provs[3:6]
        for _ in range(n):
            jid = self.open("k3b", provs)
            res, salts = self.rand(32), [self.rand(32) for _ in provs]
            commits = [sign_commit(self.keys[p.address], jid, i, commitment_for(jid, p.address, res, salts[i]),
                                   chain_id=self.dep.chain_id, market=self.dep.market) for i, p in enumerate(provs)]
            self.record("k3b.commitBatch", self.req.commit_batch(jid, commits))
            self.record("k3b.revealBatch+settle",
                        self.req.reveal_batch(jid, [(i, res, s) for i, s in enumerate(salts)]))
        self.withdraw_all("k3b", provs)

    def batch_finalize(self, n: int) -> None:
        p = self.provs[0]
        ids = []
        for _ in range(n):
            jid = self.open("bf", [p])
            self.record("bf.submit", p.submit_result(jid, self.rand(32)))
            ids.append(jid)
        single = ids.pop()
        time_travel(self.chain.rpc_url, 120)
        self.record("bf.finalize(single)", self.req.finalize(single))
        r = self.req.finalize_batch(ids)
        self.gas["bf.finalizeBatch"].append(r.gas_used)
        self.gas["bf.finalizeBatch/job"].append(r.gas_used // len(ids))
        self.withdraw_all("bf", [p])


def mean(xs: list[int]) -> int:
    return int(statistics.fmean(xs)) if xs else 0


def measure(jobs: int, batch: int, seed: int | None = None) -> dict:
    """Run every scenario on a fresh Anvil; the report's `steps_mean_gas` and `per_job_gas` are the paths."""
    t0 = time.time()
    with LocalChain("anvil") as chain:
        b = Bench(chain, seed)
        # Warm-up: every account has used the market once (nonce words, balances exist), as in steady state.
        b.k1_direct(1), b.k1_relayed(1), b.k3_direct(1), b.k3_batched(1)
        b.gas.clear()
        b.k1_direct(jobs)
        b.k1_relayed(jobs)
        b.k3_direct(jobs)
        b.k3_batched(jobs)
        b.batch_finalize(batch)
    g = {k: mean(v) for k, v in b.gas.items()}
    n = jobs
    per_job = {
        "k1_direct": g["k1.open"] + g["k1.submit"] + g["k1.accept"] + sum(b.gas["k1.withdraw"]) // n,
        "k1_relayed": g["k1r.open"] + g["k1r.acceptSignedResult"] + sum(b.gas["k1r.withdraw"]) // n,
        "k1_optimistic_batch": g["bf.open"] + g["bf.submit"] + g["bf.finalizeBatch/job"]
        + sum(b.gas["bf.withdraw"]) // max(1, batch),
        "k3_direct": g["k3.open"] + 3 * g["k3.commit"] + 2 * g["k3.reveal"] + g["k3.reveal+settle"]
        + sum(b.gas["k3.withdraw"]) // n,
        "k3_batched": g["k3b.open"] + g["k3b.commitBatch"] + g["k3b.revealBatch+settle"]
        + sum(b.gas["k3b.withdraw"]) // n,
    }
    summary = {
        "k1_total_gas": per_job["k1_direct"],
        "k1_relayed_total_gas": per_job["k1_relayed"],
        "k1_optimistic_batch_total_gas": per_job["k1_optimistic_batch"],
        "k3_total_gas": per_job["k3_direct"],
        "k3_batched_total_gas": per_job["k3_batched"],
        "batch_finalize_gas_per_job": g["bf.finalizeBatch/job"],
        "single_finalize_gas": g["bf.finalize(single)"],
        "iexec_reference_gas_per_task": IEXEC_PER_TASK,
    }
    return {"steps_mean_gas": g, "steps_samples": {k: len(v) for k, v in b.gas.items()},
            "per_job_gas": per_job, "targets": TARGETS, "summary": summary,
            "params": {"jobs": n, "batch": batch, "seed": seed, "chain": "anvil 1.7.1"},
            "seconds": round(time.time() - t0, 1)}


def paths(report: dict) -> dict[str, int]:
    """Path name -> gas: every step (mean per call) and every per-job total of a report."""
    out = dict(report["steps_mean_gas"])
    out.update({f"per_job.{k}": v for k, v in report["per_job_gas"].items()})
    return dict(sorted(out.items()))


def snapshot_of(report: dict) -> dict:
    """The committed snapshot: the parameters it was measured with, and the gas of every path."""
    params = {k: report["params"][k] for k in ("jobs", "batch", "seed")}
    return {"params": params, "tolerance": TOLERANCE, "gas": paths(report)}


def compare(snapshot: dict, report: dict, tolerance: float | None = None) -> list[str]:
    """One line per path whose gas rose more than `tolerance` (default: the snapshot's) over the snapshot, or
    that the report lacks; empty when every path is within it."""
    tol = snapshot.get("tolerance", TOLERANCE) if tolerance is None else tolerance
    now = paths(report)
    problems = []
    for name, before in sorted(snapshot["gas"].items()):
        after = now.get(name)
        if after is None:
            problems.append(f"{name}: not measured any more (snapshot {before:,})")
        elif after > before * (1 + tol):
            problems.append(f"{name}: {after:,} gas, {100 * (after - before) / before:+.2f}% over the snapshot's "
                            f"{before:,} (tolerance {100 * tol:.0f}%)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10, help="jobs per path; one withdraw per provider per this many")
    ap.add_argument("--batch", type=int, default=21, help="jobs finalized together (one is finalized alone)")
    ap.add_argument("--seed", type=int, help="seed every random input (reproducible gas)")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--write-snapshot", metavar="PATH", help="measure with the snapshot parameters, write PATH")
    ap.add_argument("--check-snapshot", metavar="PATH", help="measure as PATH was, fail on a rise over it")
    args = ap.parse_args(argv)
    if args.write_snapshot or args.check_snapshot:
        params = SNAPSHOT_PARAMS
        if args.check_snapshot:
            with open(args.check_snapshot) as fh:
                snap = json.load(fh)
            params = snap["params"]
        report = measure(params["jobs"], params["batch"], params["seed"])
        if args.write_snapshot:
            with open(args.write_snapshot, "w") as fh:
                json.dump(snapshot_of(report), fh, indent=2, sort_keys=True)
                fh.write("\n")
            print(f"wrote {args.write_snapshot}")
        if args.check_snapshot:
            problems = compare(snap, report)
            for line in problems:
                print(line)
            print("gas snapshot: " + (f"{len(problems)} path(s) over" if problems else "every path within"))
            return 1 if problems else 0
        return 0
    report = measure(args.jobs, args.batch, args.seed)
    g, summary = report["steps_mean_gas"], report["summary"]
    steps_samples = report["steps_samples"]
    print(f"{'step':<28}{'mean gas':>12}{'samples':>9}")
    for k in sorted(g):
        print(f"{k:<28}{g[k]:>12,}{steps_samples[k]:>9}")
    print()
    print(f"{'per job (withdraw amortized)':<34}{'gas':>10}{'target':>10}{'vs iExec':>10}")
    rows = [("k1 submit+accept", "k1_total_gas"), ("k1 relayed signed result", "k1_relayed_total_gas"),
            ("k1 submit+batched finalize", "k1_optimistic_batch_total_gas"), ("k3 commit+reveal", "k3_total_gas"),
            ("k3 batched commit/reveal", "k3_batched_total_gas"),
            ("batched finalize, per job", "batch_finalize_gas_per_job")]
    for label, key in rows:
        tgt = TARGETS.get(key) or TARGETS.get({"k1_relayed_total_gas": "k1_total_gas",
                                               "k1_optimistic_batch_total_gas": "k1_total_gas",
                                               "k3_batched_total_gas": "k3_total_gas"}.get(key, ""), 0)
        ok = "" if not tgt else ("  ok" if summary[key] <= tgt else "  OVER")
        print(f"{label:<34}{summary[key]:>10,}{tgt:>10,}{IEXEC_PER_TASK / summary[key]:>9.1f}x{ok}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
            fh.write("\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
