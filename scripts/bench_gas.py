#!/usr/bin/env python3
"""Gas per step and per job for the market's settlement paths, measured on a real Anvil.

Usage: python scripts/bench_gas.py [--jobs 10] [--batch 20] [--out gas.json]

Every figure is gasUsed from receipts, in steady state: the providers and requester have used the market
before (bid-nonce words and balances exist), and each provider withdraws its earnings once per `--jobs` jobs,
so one withdraw is amortized over that many jobs. Reference: iExec PoCo spends about 1.6-1.8M gas per task.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict

from eth_account import Account

from marketplace.chain import LocalChain, time_travel
from marketplace.client import ChainClient, connect
from marketplace.deploy import deploy
from marketplace.eip712 import sign_bid, sign_commit, sign_result
from marketplace.market import Market
from marketplace.types import Bid, JobParams, commitment_for, to_wei

TARGETS = {"k1_total_gas": 200_000, "k3_total_gas": 450_000, "batch_finalize_gas_per_job": 40_000}
IEXEC_PER_TASK = 1_700_000


class Bench:
    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain
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
            p.register(to_wei(5_000), b"\x00\x25" + os.urandom(37), os.urandom(32))
        self.req.approve(self.dep.market, 2**255)

    def bid(self, p: Market, spec: bytes):
        n = self.nonces[p.address]
        self.nonces[p.address] += 1
        b = Bid(spec_hash=spec, requester=self.req.address, provider=p.address, price=to_wei(1),
                collateral=to_wei(10), run_seconds=30, expiry=self.req.client.timestamp() + 3600, nonce=n)
        return sign_bid(self.keys[p.address], b, chain_id=self.dep.chain_id, market=self.dep.market)

    def open(self, tag: str, provs: list[Market]) -> bytes:
        spec = os.urandom(32)
        params = JobParams(spec_hash=spec, salt=os.urandom(32), deadline=self.req.client.timestamp() + 600,
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
            self.record("k1.submit", p.submit_result(jid, os.urandom(32)))
            self.record("k1.accept", self.req.accept(jid))
        self.withdraw_all("k1", [p])

    def k1_relayed(self, n: int) -> None:
        p = self.provs[1]
        for _ in range(n):
            jid = self.open("k1r", [p])
            res = os.urandom(32)
            sig = sign_result(self.keys[p.address], jid, res, chain_id=self.dep.chain_id, market=self.dep.market)
            self.record("k1r.acceptSignedResult", self.req.accept_signed_result(jid, res, sig))
        self.withdraw_all("k1r", [p])

    def k3_direct(self, n: int) -> None:
        provs = self.provs[:3]
        for _ in range(n):
            jid = self.open("k3", provs)
            res, salts = os.urandom(32), [os.urandom(32) for _ in provs]
            for i, p in enumerate(provs):
                self.record("k3.commit", p.commit(jid, i, commitment_for(jid, p.address, res, salts[i])))
            for i, p in enumerate(provs):
                self.record("k3.reveal" if i < 2 else "k3.reveal+settle", p.reveal(jid, i, res, salts[i]))
        self.withdraw_all("k3", provs)

    def k3_batched(self, n: int) -> None:
        provs = self.provs[3:6]
        for _ in range(n):
            jid = self.open("k3b", provs)
            res, salts = os.urandom(32), [os.urandom(32) for _ in provs]
            commits = [sign_commit(self.keys[p.address], jid, i, commitment_for(jid, p.address, res, salts[i]),
                                   chain_id=self.dep.chain_id, market=self.dep.market) for i, p in enumerate(provs)]
            self.record("k3b.commitBatch", self.req.commit_batch(jid, commits))
            self.record("k3b.revealBatch+settle", self.req.reveal_batch(jid, [(i, res, s) for i, s in enumerate(salts)]))
        self.withdraw_all("k3b", provs)

    def batch_finalize(self, n: int) -> None:
        p = self.provs[0]
        ids = []
        for _ in range(n):
            jid = self.open("bf", [p])
            self.record("bf.submit", p.submit_result(jid, os.urandom(32)))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10, help="jobs per path; one withdraw per provider per this many")
    ap.add_argument("--batch", type=int, default=21, help="jobs finalized together (one is finalized alone)")
    ap.add_argument("--out", help="write the JSON report here")
    args = ap.parse_args(argv)
    t0 = time.time()
    with LocalChain("anvil") as chain:
        b = Bench(chain)
        # Warm-up: every account has used the market once (nonce words, balances exist), as in steady state.
        b.k1_direct(1), b.k1_relayed(1), b.k3_direct(1), b.k3_batched(1)
        b.gas.clear()
        b.k1_direct(args.jobs)
        b.k1_relayed(args.jobs)
        b.k3_direct(args.jobs)
        b.k3_batched(args.jobs)
        b.batch_finalize(args.batch)
    g = {k: mean(v) for k, v in b.gas.items()}
    n = args.jobs
    per_job = {
        "k1_direct": g["k1.open"] + g["k1.submit"] + g["k1.accept"] + sum(b.gas["k1.withdraw"]) // n,
        "k1_relayed": g["k1r.open"] + g["k1r.acceptSignedResult"] + sum(b.gas["k1r.withdraw"]) // n,
        "k1_optimistic_batch": g["bf.open"] + g["bf.submit"] + g["bf.finalizeBatch/job"]
        + sum(b.gas["bf.withdraw"]) // max(1, args.batch),
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
    report = {"steps_mean_gas": g, "steps_samples": {k: len(v) for k, v in b.gas.items()},
              "per_job_gas": per_job, "targets": TARGETS, "summary": summary,
              "params": {"jobs": n, "batch": args.batch, "chain": "anvil 1.7.1"},
              "seconds": round(time.time() - t0, 1)}
    print(f"{'step':<28}{'mean gas':>12}{'samples':>9}")
    for k in sorted(g):
        print(f"{k:<28}{g[k]:>12,}{len(b.gas[k]):>9}")
    print()
    print(f"{'per job (withdraw amortized)':<34}{'gas':>10}{'target':>10}{'vs iExec':>10}")
    rows = [("k1 submit+accept", "k1_total_gas"), ("k1 relayed signed result", "k1_relayed_total_gas"),
            ("k1 submit+batched finalize", "k1_optimistic_batch_total_gas"), ("k3 commit+reveal", "k3_total_gas"),
            ("k3 batched commit/reveal", "k3_batched_total_gas"), ("batched finalize, per job", "batch_finalize_gas_per_job")]
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
