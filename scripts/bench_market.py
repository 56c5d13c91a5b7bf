#!/usr/bin/env python
"""Market benchmark: gossip latency over a real libp2p mesh (and, later, the market's own figures).

    python scripts/bench_market.py --out market.json [--only gossip] [--nodes 20] [--msgs 200] [--rate 2]

Sections (each a function returning a dict; `--only NAME` runs one):
- gossip: one `agora p2p bootstrap` process, `--nodes` node processes (host with gossip, connected through
  `maintain_peers` with only the bootstrap address, subscribed to a job topic with `AnnounceValidator` installed)
  and one publisher process that publishes `--msgs` real signed announcements, paced at `--rate` per second
  round-robin over 4 requester keys (the validator allows 20/s per requester). Latency per receiver = receive
  wall time - publish wall time (same machine clock). Reports p50/p99/max and the delivery ratio.
- market: Anvil, a bootstrap node, `--providers` `agora node run` processes and one in-process requester
  (scripts/_bench_jobs.py): submit -> verified result for a tiny job at k = 1 and k = 3 (`k1_p50_ms`,
  `k3_p50_ms` exclude the bid window, `k1_total_p50_ms` includes it, closing early), and `jobs_per_s` for
  `--burst` concurrent k = 1 jobs, with a per-phase breakdown in the section details.

The JSON has a top-level `summary` (flat figures, e.g. `gossip_p99_ms`) and `sections` (details per section).
Workers are this same script run with `--worker gossip-node|gossip-publisher`; they talk JSON lines.

Besides latency it reports CPU: `cpu_per_msg_per_node_ms` (each node's process time while publishing, minus its
idle rate measured over the settle period, per announcement) and `idle_cpu_per_node_pct`; these hold up when other
work shares the machine, the latencies do not (compare runs made under the same `uptime` load).

Cost model (measured, 2 cores, 20 nodes, rate 2/s): with py-libp2p's defaults (gossipsub v1.2 IDONTWANT, mesh
6/4/12, yamux WINDOW_UPDATE after every read) ~18 ms CPU per announcement per node; with marketplace.p2p.gossip's
settings (v1.1 only, mesh 4/3/8, PY_YAMUX_RELEASE_ON_READ=0) ~5-8 ms. What remains is per-frame py-libp2p work
(noise, yamux, trio; ~0.5 ms per copy of a message sent or received), and an idle node's ~2 % of a core, mostly
liveness pings (a new stream per ping per peer every 5 s). Above ~5 announcements/s, or with other work on the
machine, the event loops lag and p99 grows to seconds. Knobs for experiments: `--ping-interval/--ping-timeout`, env
BENCH_LOG=WARNING (workers' logs), BENCH_GOSSIP_IDONTWANT=1, BENCH_GOSSIP_DEGREE=D,LOW,HIGH,
PY_YAMUX_RELEASE_ON_READ=1 (py-libp2p's defaults back), BENCH_PROFILE=DIR (cProfile each node, CPU time, while
publishing, into DIR/node-PID.prof, and count the RPCs each node writes by kind: `rpcs_written_per_node`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAIN_ID = 31337
MARKET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
TOPIC = "agora/1/jobs/inference/cpu"
N_REQUESTERS = 4  # announcements go round-robin over this many throw-away requester keys


# ---------------------------------------------------------------------------------------------------- process glue
class Worker:
    """A child process speaking JSON lines: events on stdout, commands on stdin (closing stdin stops it)."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    continue
        except (ValueError, OSError):
            return

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} from {' '.join(self.proc.args[:4])} within {timeout} s")
            try:
                obj = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker {self.proc.args[:4]} exited with {self.proc.returncode}") from None
                continue
            if obj.get("event") == event:
                return obj

    def command(self, cmd: dict[str, Any], reply: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.wait(reply, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------------------------- gossip workers
_PROFILER: list[Any] = []  # the node's cProfile.Profile when BENCH_PROFILE is set


async def _worker_gossip_node(bootstrap: str) -> None:
    """A market node: validates announcements, records (nonce, receive wall time) of each one delivered."""
    import trio
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from marketplace.admission import AnnounceValidator
    from marketplace.errors import ProtocolError
    from marketplace.p2p import open_host

    validator = AnnounceValidator(chain_id=CHAIN_ID, market=MARKET)
    rejected: dict[str, int] = {}

    def check(data: bytes, forwarder: object) -> bool:
        try:
            validator.check(data, TOPIC)
        except ProtocolError as err:
            rejected[err.reason] = rejected.get(err.reason, 0) + 1
            return False
        return True

    received: list[tuple[str, float]] = []
    async with open_host(key=create_new_key_pair(), gossip=_gossip_options()) as node, \
            trio.open_nursery() as nursery:
        peers = await nursery.start(_maintain, node, [bootstrap])
        node.gossip.set_validator(TOPIC, check)
        sub = await node.gossip.subscribe(TOPIC)

        async def pump() -> None:
            async for msg in sub:
                received.append((json.loads(msg.data)["nonce"], time.time()))

        nursery.start_soon(pump)
        emit({"event": "ready", "peer_id": str(node.peer_id)})
        stdin = trio.wrap_file(sys.stdin)
        while line := await stdin.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "state":
                emit({"event": "state", "peers": len(node.connected_peers()),
                      "topic_peers": len(node.gossip.topic_peers(TOPIC)),
                      "mesh": len(node.gossip.mesh_peers(TOPIC)), "cpu_s": time.process_time()})
            elif cmd["cmd"] == "profile":  # BENCH_PROFILE: profile only the publishing window
                _RPC_COUNTS.clear()
                if _PROFILER:
                    _PROFILER[0].enable()
                emit({"event": "profiling"})
            elif cmd["cmd"] == "dump":
                if _PROFILER:
                    _PROFILER[0].disable()
                emit({"event": "dump", "received": received, "rejected": rejected, "cpu_s": time.process_time(),
                      "rpcs_written": _RPC_COUNTS,
                      "dropped_by_queue": node.gossip.dropped, "liveness_dropped": peers.liveness.stats.dropped,
                      "liveness_overloaded": peers.liveness.stats.overloaded})
        nursery.cancel_scope.cancel()


async def _worker_gossip_publisher(bootstrap: str, n_msgs: int, rate: float) -> None:
    """Publishes `n_msgs` signed announcements paced at `rate`/s; reports (nonce, publish wall time) each."""
    import trio
    from eth_account import Account
    from eth_utils import keccak
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from marketplace import protocol as P
    from marketplace.p2p import open_host

    accounts = [Account.from_key(keccak(f"bench-requester-{i}".encode())) for i in range(N_REQUESTERS)]
    options = dataclasses.replace(_gossip_options(), publish_rate=max(rate * 2, 50.0))
    async with open_host(key=create_new_key_pair(), gossip=options) as node, trio.open_nursery() as nursery:
        await nursery.start(_maintain, node, [bootstrap])
        emit({"event": "ready", "peer_id": str(node.peer_id)})
        stdin = trio.wrap_file(sys.stdin)
        await stdin.readline()  # "go"
        await node.gossip.wait_for_topic_peers(TOPIC, 1, timeout=30)
        published: list[tuple[str, float]] = []
        start = trio.current_time()
        for i in range(n_msgs):
            await trio.sleep_until(start + i / rate)
            acct = accounts[i % len(accounts)]
            ts = int(time.time() * 1000)
            ann = P.Announce(chain_id=CHAIN_ID, market=MARKET, requester=acct.address,
                             requester_peer=str(node.peer_id), requester_addrs=[node.addr],
                             spec_hash="0x" + os.urandom(32).hex(), kind="inference",
                             device="cpu", replicas=1, max_price="1000", run_seconds=60, window=60, input_bytes=0,
                             ts_ms=ts, bid_until_ms=ts + 30_000, nonce="0x" + os.urandom(16).hex()).signed(acct.key)
            data = ann.encode()
            published.append((ann.nonce, time.time()))
            await node.gossip.publish(TOPIC, data)
        emit({"event": "published", "published": published})
        await stdin.readline()
        nursery.cancel_scope.cancel()


def _gossip_options() -> Any:
    """The workers' GossipOptions: the defaults, or the experiment knobs BENCH_GOSSIP_IDONTWANT=1 (gossipsub v1.2)
    and BENCH_GOSSIP_DEGREE=D,LOW,HIGH (mesh degree bounds)."""
    from marketplace.p2p.gossip import GossipOptions

    options = GossipOptions(idontwant=os.environ.get("BENCH_GOSSIP_IDONTWANT") == "1")
    if degrees := os.environ.get("BENCH_GOSSIP_DEGREE"):
        d, low, high = (int(x) for x in degrees.split(","))
        options = dataclasses.replace(options, degree=d, degree_low=low, degree_high=high)
    return options


async def _maintain(node: Any, bootstrap: list[str], *, task_status: Any) -> None:
    from marketplace.p2p import maintain_peers
    from marketplace.p2p.liveness import DEFAULT_INTERVAL, DEFAULT_TIMEOUT

    await maintain_peers(node, bootstrap, task_status=task_status,
                         ping_interval=float(os.environ.get("BENCH_PING_INTERVAL", DEFAULT_INTERVAL)),
                         ping_timeout=float(os.environ.get("BENCH_PING_TIMEOUT", DEFAULT_TIMEOUT)))


def run_worker(args: argparse.Namespace) -> int:
    import logging

    import libp2p  # noqa: F401 - its import resets the "libp2p" logger, so import it before quieting it
    import trio

    logging.basicConfig(level=getattr(logging, os.environ.get("BENCH_LOG", "ERROR")), stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    profile_dir = os.environ.get("BENCH_PROFILE")  # experiment: cProfile (CPU time) of each node while publishing
    if profile_dir and args.worker == "gossip-node":
        import cProfile

        _PROFILER.append(cProfile.Profile(time.process_time))

        def _dump_and_exit(*_: object) -> None:
            _PROFILER[0].disable()
            _PROFILER[0].dump_stats(f"{profile_dir}/node-{os.getpid()}.prof")
            os._exit(0)

        signal.signal(signal.SIGTERM, _dump_and_exit)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if profile_dir:  # also count the pubsub RPCs each node writes, by kind (reported in `dump`)
        _count_rpcs()
    if args.worker == "gossip-node":
        trio.run(_worker_gossip_node, args.bootstrap)
    else:
        trio.run(_worker_gossip_publisher, args.bootstrap, args.msgs, args.rate)
    return 0


def _count_rpcs() -> None:
    """Experiment (BENCH_PROFILE): wrap Pubsub.write_msg in this worker to count outbound RPCs by content."""
    from libp2p.pubsub.pubsub import Pubsub

    original = Pubsub.write_msg

    async def write_msg(self: Any, stream: Any, rpc: Any) -> bool:
        kinds = [k for k in ("publish", "subscriptions") if len(getattr(rpc, k))]
        if rpc.HasField("control"):
            kinds += [f.name for f, _ in rpc.control.ListFields()]
        key = "+".join(kinds) or "empty"
        _RPC_COUNTS[key] = _RPC_COUNTS.get(key, 0) + 1
        return await original(self, stream, rpc)

    Pubsub.write_msg = write_msg  # type: ignore[method-assign]


_RPC_COUNTS: dict[str, int] = {}


# ---------------------------------------------------------------------------------------------------- gossip section
def bench_gossip(n_nodes: int = 20, n_msgs: int = 200, *, rate: float = 2.0, settle_s: float = 5.0,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a bootstrap, `n_nodes` nodes and a publisher; publish `n_msgs` announcements; measure delivery."""
    me = [sys.executable, str(Path(__file__).resolve())]
    workers: list[Worker] = []
    tmp = tempfile.TemporaryDirectory(prefix="bench-gossip-")
    try:
        boot = Worker([sys.executable, "-m", "marketplace.cli", "p2p", "bootstrap", "--listen",
                       "/ip4/127.0.0.1/tcp/0", "--key-file", f"{tmp.name}/boot.key", "--json"])
        workers.append(boot)
        _ready(boot)
        addr = boot.ready["addrs"][0]
        t0 = time.monotonic()
        # start them all, then wait: start-up is import-bound
        nodes = [Worker(me + ["--worker", "gossip-node", "--bootstrap", addr]) for _ in range(n_nodes)]
        workers.extend(nodes)
        for w in nodes:
            _ready(w)
        publisher = Worker(me + ["--worker", "gossip-publisher", "--bootstrap", addr, "--msgs", str(n_msgs),
                                 "--rate", str(rate)])
        workers.append(publisher)
        _ready(publisher)
        log(f"gossip: {n_nodes} nodes + publisher up in {time.monotonic() - t0:.1f} s; waiting for the mesh")
        mesh = _wait_for_mesh(nodes, settle_s)
        if boot.proc.poll() is not None:
            raise RuntimeError(f"the bootstrap exited with {boot.proc.returncode}: {list(boot.events.queue)}")
        log(f"gossip: mesh formed (peers per node min {mesh['peers_min']} max {mesh['peers_max']}, "
            f"topic mesh min {mesh['mesh_min']}); publishing {n_msgs} at {rate:g}/s")
        for w in nodes:
            w.command({"cmd": "profile"}, "profiling")
        t_go = time.monotonic()
        published = dict(publisher.command({"cmd": "go"}, "published", timeout=n_msgs / rate + 120)["published"])
        dumps = _collect(nodes, len(published) * n_nodes, settle_s)
        cpu = _cpu_figures(mesh, dumps, time.monotonic() - t_go, len(published))
    finally:
        for w in reversed(workers):  # the bootstrap last, so nodes do not spend their last moments redialling it
            w.stop()
        tmp.cleanup()
    return {**_gossip_figures(published, dumps, n_nodes, n_msgs, rate, mesh), **cpu}


def _ready(w: Worker, timeout: float = 180.0) -> Worker:
    w.ready = w.wait("ready", timeout)
    return w


def _collect(nodes: list[Worker], expected: int, quiet_s: float, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Receipts of every node, once all messages arrived or nothing new arrived for `quiet_s` seconds."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        dumps = [w.command({"cmd": "dump"}, "dump") for w in nodes]
        total = sum(len(d["received"]) for d in dumps)
        if total != last:
            last, last_change = total, time.monotonic()
        if total >= expected or time.monotonic() - last_change > quiet_s or time.monotonic() > deadline:
            return dumps
        time.sleep(0.5)


def _wait_for_mesh(nodes: list[Worker], settle_s: float, timeout: float = 60.0) -> dict[str, Any]:
    """Until every node has >= 2 topic peers in its gossipsub mesh (or timeout), then `settle_s` more.

    The settle period doubles as the idle-CPU measurement: each node's process time across it (`idle_cpu`)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [w.command({"cmd": "state"}, "state") for w in nodes]
        if all(s["mesh"] >= 2 for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    t0 = time.monotonic()
    time.sleep(settle_s)
    after = [w.command({"cmd": "state"}, "state") for w in nodes]
    idle_s = time.monotonic() - t0
    return {"peers_min": min(s["peers"] for s in after), "peers_max": max(s["peers"] for s in after),
            "mesh_min": min(s["mesh"] for s in after), "mesh_max": max(s["mesh"] for s in after),
            "idle_cpu": [(a["cpu_s"] - b["cpu_s"]) / idle_s for a, b in zip(after, states, strict=True)],
            "cpu_s": [a["cpu_s"] for a in after]}


def _cpu_figures(mesh: dict[str, Any], dumps: list[dict[str, Any]], busy_s: float, published: int) -> dict[str, Any]:
    """CPU per announcement per node (process time while publishing minus the node's idle rate) and idle load."""
    idle = mesh.pop("idle_cpu")
    before = mesh.pop("cpu_s")
    per_msg = [max(0.0, d["cpu_s"] - b - i * busy_s) / max(published, 1) * 1000
               for d, b, i in zip(dumps, before, idle, strict=True)]
    return {"cpu_per_msg_per_node_ms": round(statistics.fmean(per_msg), 2),
            "cpu_per_msg_per_node_max_ms": round(max(per_msg), 2),
            "idle_cpu_per_node_pct": round(statistics.fmean(idle) * 100, 2)}


def _gossip_figures(published: dict[str, float], dumps: list[dict[str, Any]], n_nodes: int, n_msgs: int,
                    rate: float, mesh: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    delivered = 0
    rejected: dict[str, int] = {}
    for d in dumps:
        seen = set()
        for nonce, t in d["received"]:
            if nonce in published and nonce not in seen:
                seen.add(nonce)
                latencies.append((t - published[nonce]) * 1000)
        delivered += len(seen)
        for k, v in d["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    expected = n_nodes * len(published)
    ms = (lambda q: round(percentile(latencies, q), 2)) if latencies else (lambda q: float("nan"))
    return {
        "nodes": n_nodes, "msgs": n_msgs, "rate_per_s": rate, "published": len(published),
        "deliveries": delivered, "expected_deliveries": expected,
        "delivery_ratio": round(delivered / expected, 4) if expected else 0.0,
        "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "max_ms": round(max(latencies), 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "rejected_by_validators": rejected, "mesh": mesh,
        "queue_drops": sum(d["dropped_by_queue"] for d in dumps),
        "rpcs_written_per_node": _sum_counts([d.get("rpcs_written", {}) for d in dumps], n_nodes),
        "liveness_drops": sum(d["liveness_dropped"] for d in dumps),
        "liveness_misses_ignored_overloaded": sum(d["liveness_overloaded"] for d in dumps),
    }


def _sum_counts(counts: list[dict[str, int]], n: int) -> dict[str, float]:
    total: dict[str, float] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v / n
    return {k: round(v, 1) for k, v in sorted(total.items())}


def gossip_section(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(details, summary figures) of the gossip section."""
    g = bench_gossip(args.nodes, args.msgs, rate=args.rate)
    return g, {"gossip_p50_ms": g["p50_ms"], "gossip_p99_ms": g["p99_ms"], "gossip_max_ms": g["max_ms"],
               "gossip_delivery_ratio": g["delivery_ratio"],
               "gossip_cpu_per_msg_per_node_ms": g["cpu_per_msg_per_node_ms"],
               "gossip_idle_cpu_per_node_pct": g["idle_cpu_per_node_pct"]}


# Each section: name -> function(args) -> (details, summary). The lead adds "market" here (k1_p50_ms, k3_p50_ms,
# k1_total_p50_ms, jobs_per_s) with its own options; `--only` picks one.
def market_section(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole jobs over real processes (scripts/_bench_jobs.py): k1/k3 latency, throughput with 4 providers."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from _bench_jobs import market_figures

    summary, details = market_figures(providers=args.providers, jobs=args.jobs, burst=args.burst,
                                      bid_window=args.bid_window)
    return details, summary  # this script's sections return (details, figures)


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], dict[str, Any]]]] = {
    "gossip": gossip_section,
    "market": market_section,
}


def print_table(summary: dict[str, Any], sections: dict[str, Any]) -> None:
    if "market" in sections:
        m = sections["market"]
        print(f"\nmarket: {m['providers']} providers, {m['jobs_per_k']} jobs per k, burst of {m['burst_jobs']}")
        for k, phases in m["phases_ms_p50"].items():
            print(f"  k={k} p50 phases (ms): " + ", ".join(f"{n} {v}" for n, v in phases.items()))
    if "gossip" in sections:
        g = sections["gossip"]
        print(f"\ngossip: {g['nodes']} nodes, {g['published']} announcements at {g['rate_per_s']:g}/s")
    targets = {"k1_p50_ms": "<= 300", "k3_p50_ms": "<= 300", "k1_total_p50_ms": "<= 1000",
               "jobs_per_s": ">= 10", "gossip_p99_ms": "<= 100"}
    print(f"\n{'figure':<34} {'value':>12}  target")
    for key, value in summary.items():
        print(f"{key:<34} {value:>12}  {targets.get(key, '')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    ap.add_argument("--nodes", type=int, default=20, help="gossip: node processes")
    ap.add_argument("--msgs", type=int, default=200, help="gossip: announcements to publish")
    ap.add_argument("--rate", type=float, default=2.0,
                    help="gossip: announcements per second (py-libp2p costs ~20 ms CPU per message per node)")
    ap.add_argument("--ping-interval", type=float, help="gossip: liveness ping interval of the nodes (s)")
    ap.add_argument("--ping-timeout", type=float, help="gossip: liveness ping timeout of the nodes (s)")
    ap.add_argument("--providers", type=int, default=4, help="market: provider node processes")
    ap.add_argument("--jobs", type=int, default=15, help="market: sequential jobs per k for the latency figures")
    ap.add_argument("--burst", type=int, default=40, help="market: concurrent k = 1 jobs for the throughput figure")
    ap.add_argument("--bid-window", type=float, default=2.0, help="market: bid window (closes early)")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--worker", choices=["gossip-node", "gossip-publisher"], help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return run_worker(args)

    if args.ping_interval:  # workers read these (they inherit the environment)
        os.environ["BENCH_PING_INTERVAL"] = str(args.ping_interval)
    if args.ping_timeout:
        os.environ["BENCH_PING_TIMEOUT"] = str(args.ping_timeout)
    names = [args.only] if args.only else list(SECTIONS)
    sections: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for name in names:
        details, figures = SECTIONS[name](args)
        sections[name] = details
        summary.update(figures)
    report = {"summary": summary, "sections": sections,
              "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                      "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    if args.out:  # first: a table that fails to print must not lose a long run
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(summary, sections)
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
