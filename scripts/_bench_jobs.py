"""The market section of scripts/bench_market.py: latency and throughput of whole jobs over real processes.

One Anvil chain, one `agora p2p bootstrap`, `--providers` (default 4) `agora node run` processes and one
in-process `Requester` (the Python API `agora job submit` uses; one host serving every job). The job is the tiny
example `examples/specs/mlp-inference.yaml` (512 samples, an 8-32-4 MLP).

- k1 / k3 latency: `--jobs` jobs one after the other; per job, "submit to verified result" is the time from the
  announcement to the moment the requester has the outputs on disk, checked against the settled on-chain result.
  `*_p50_ms` exclude the bid window (announcement -> bids closed), `k1_total_p50_ms` includes it, with a window
  that closes early (`grace` after k acceptable bids).
- throughput: `--burst` k = 1 jobs submitted concurrently; jobs settled (and verified) per second of wall time.

All processes share this machine's 2 cores, so every figure includes the other parties' CPU.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC = "mlp-inference.yaml"
BURST_BID_WINDOW_S = 8.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def market_figures(*, providers: int = 4, jobs: int = 15, burst: int = 40, bid_window: float = 2.0,
                   grace: float = 0.05, quiet: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, details) of the market section."""
    from marketplace.devchain import LocalChain
    from marketplace.devstack import LocalStack

    say = (lambda *_: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    tmp = Path(tempfile.mkdtemp(prefix="agora-bench-market-"))
    with LocalChain("anvil") as chain:
        stack = LocalStack.create(chain.rpc_url, tmp, password="bench")
        os.environ.update({k: stack.env[k] for k in ("AGORA_RPC", "AGORA_HOME", "AGORA_DEPLOYMENTS",
                                                     "AGORA_PASSWORD")})
        say("market: deploying, importing keys, building example blobs")
        stack.deploy()
        names = ["requester"] + [f"prov{i}" for i in range(providers)]
        stack.import_keys({name: chain.dev_private_keys[i] for i, name in enumerate(names, start=1)})
        stack.make_examples()
        try:
            bootstrap = stack.start_bootstrap()
            for i in range(providers):
                say(f"market: starting provider {i}")
                stack.start_node(f"prov{i}", {"stake": "1000", "collateral": "1",
                                              "capacity": max(2, burst // providers),
                                              "prices": {"inference": str(1 + i / 10)}, "kinds": ["inference"],
                                              "ops_port": -1}, args=())
            say("market: providers ready; running jobs")
            return _run_jobs(tmp, bootstrap, providers=providers, jobs=jobs, burst=burst, bid_window=bid_window,
                             grace=grace, say=say)
        finally:
            stack.close()


def _run_jobs(tmp: Path, bootstrap: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import trio

    from marketplace.blobs import BlobStore
    from marketplace.client import ChainClient
    from marketplace.config import load_settings
    from marketplace.market import Market
    from marketplace.p2p import identity_key_path, load_or_create_key
    from marketplace.requester import Requester, RequesterStore
    from marketplace.spec import load_spec
    from marketplace.types import to_wei
    from marketplace.wallet import load_account

    settings = load_settings()
    account = load_account(account="requester", password_file=None, settings=settings)
    market = Market(ChainClient.open(settings.rpc_url, settings.deployments_dir, account=account))
    spec = load_spec(tmp / "specs" / SPEC)
    say = kw["say"]

    async def one(req: Any, k: int, n: int, bid_window: float | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = await req.submit(spec, k=k, max_price=to_wei(5), bid_window=bid_window or kw["bid_window"],
                               grace=kw["grace"],
                               approve=True, wait=True, out_dir=tmp / "out" / f"k{k}-{n}-{os.urandom(4).hex()}")
        wall = time.perf_counter() - t0
        s = out.settlement or {}
        t = s.get("timings", {})
        if s.get("outcome") != "completed" or not s.get("outputsVerified"):
            raise RuntimeError(f"job {out.job_id} did not complete with verified outputs: {s}")
        return {"wall_s": wall, "total_s": float(t["settled_s"]), "bids_closed_s": float(t["bids_closed_s"]),
                "opened_s": float(t.get("opened_s", "nan")), "first_result_s": float(t.get("first_result_s", "nan")),
                "gas": sum(int(g) for g in s.get("gas", {}).values())}

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        key = load_or_create_key(identity_key_path(settings.keystore_dir, account.address))
        store = RequesterStore.for_account(settings.home, account.address)
        async with Requester.open(market, store=store, blobs=BlobStore(tmp / "home" / "blobs"), key=key,
                                  bootstrap=[bootstrap], progress=lambda _m: None) as req:
            await req.ensure_funds(to_wei(10_000), approve=True)
            for i in range(2):  # warm-up: sandboxes, connections, caches
                await one(req, 1, -1 - i)
                await one(req, 3, -1 - i)
            runs: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
            for n in range(kw["jobs"]):
                for k in (1, 3):
                    runs[k].append(await one(req, k, n))
                say(f"market: latency round {n + 1}/{kw['jobs']}")
            burst = kw["burst"]
            say(f"market: throughput, {burst} concurrent k=1 jobs")
            results: list[dict[str, Any]] = []
            failures: list[str] = []
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for n in range(burst):
                    async def run_one(n: int = n) -> None:
                        try:
                            # a longer window: under a full burst the requester's loop answers bids late
                            results.append(await one(req, 1, 10_000 + n, bid_window=BURST_BID_WINDOW_S))
                        except Exception as err:  # noqa: BLE001 - counted and reported, not fatal
                            failures.append(f"{type(err).__name__}: {err}"[:200])
                    nursery.start_soon(run_one)
                    # Announcements paced at 20/s: the per-requester rate limit nodes enforce (20/s, burst 40).
                    await trio.sleep(0.05)
            elapsed = time.perf_counter() - t0
        summary, details = _figures(runs, results, elapsed, kw)
        details["burst_failures"] = failures
        return summary, details

    return trio.run(main)


def _figures(runs: dict[int, list[dict[str, Any]]], burst: list[dict[str, Any]], elapsed: float,
             kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    def ms(xs: list[float], q: float) -> float:
        return round(_pct(xs, q) * 1000, 1)

    excl = {k: [r["total_s"] - r["bids_closed_s"] for r in v] for k, v in runs.items()}
    total = {k: [r["total_s"] for r in v] for k, v in runs.items()}
    summary = {
        "k1_p50_ms": ms(excl[1], 50), "k3_p50_ms": ms(excl[3], 50), "k1_total_p50_ms": ms(total[1], 50),
        "k3_total_p50_ms": ms(total[3], 50), "jobs_per_s": round(len(burst) / elapsed, 2),
    }
    details = {
        "providers": kw["providers"], "jobs_per_k": kw["jobs"], "burst": kw["burst"], "bid_window_s": kw["bid_window"],
        "grace_s": kw["grace"],
        "k1_excl_bid_window_ms": {"p50": ms(excl[1], 50), "p90": ms(excl[1], 90), "max": ms(excl[1], 100)},
        "k3_excl_bid_window_ms": {"p50": ms(excl[3], 50), "p90": ms(excl[3], 90), "max": ms(excl[3], 100)},
        "k1_total_ms": {"p50": ms(total[1], 50), "p90": ms(total[1], 90)},
        "k3_total_ms": {"p50": ms(total[3], 50), "p90": ms(total[3], 90)},
        "bid_window_closed_ms_p50": {k: ms([r["bids_closed_s"] for r in v], 50) for k, v in runs.items()},
        "phases_ms_p50": {k: {"bids": ms([r["bids_closed_s"] for r in v], 50),
                              "bids_to_open": ms([r["opened_s"] - r["bids_closed_s"] for r in v], 50),
                              "open_to_first_result": ms([r["first_result_s"] - r["opened_s"] for r in v], 50),
                              "first_result_to_verified": ms([r["total_s"] - r["first_result_s"] for r in v], 50)}
                          for k, v in runs.items()},
        "gas_per_job_mean": {k: round(statistics.mean(r["gas"] for r in v)) for k, v in runs.items() if v},
        "burst_jobs": len(burst), "burst_seconds": round(elapsed, 2),
        "burst_job_total_ms": {"p50": ms([r["total_s"] for r in burst], 50),
                               "p90": ms([r["total_s"] for r in burst], 90)},
    }
    return summary, details
