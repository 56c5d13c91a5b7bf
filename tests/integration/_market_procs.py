"""Process helpers of the market tests: the whole market as separate processes on one anvil.

The process pieces (`Proc`, `NodeProc`, `wait_until`, ready lines, metrics, log tails) are
`marketplace.devstack`'s; this module adds the test actors, the adversary nodes and the requester's database.

`MarketNet` owns a fresh deployment on the session anvil, one AGORA_HOME with a keystore per dev account, the
example blobs in the requester's store, and a bootstrap node. It starts provider nodes (`agora node run`, or
the misbehaving `tests/integration/_adversary.py`), runs the requester (`agora job submit` / `agora job resume`)
and reads balances and registry numbers straight from the chain. Every process it starts is stopped at close.

Nothing here sleeps for a chain deadline: `travel_to` moves anvil's clock (evm_increaseTime + evm_mine), and
`wait_until` polls a condition with a generous timeout that is only a guard against a hang, never asserted on.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account

from marketplace import wallet
from marketplace.client import ChainClient, connect
from marketplace.deployer import deploy
from marketplace.devchain import DEV_ACCOUNTS, time_travel
from marketplace.devstack import NodeProc, Proc, agora_argv, log_tail, wait_until
from marketplace.examples import make_examples
from marketplace.market import Market
from marketplace.types import to_wei

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "market-test-password"
#: Dev account index of every actor: the deployer, the requester, three honest providers, the adversaries and
#: the two providers that are killed after assignment.
ACCOUNTS = {"deployer": 0, "alice": 1, "h1": 2, "h2": 3, "h3": 4, "liar": 5, "copier": 6, "victim": 7, "lone": 8}
PROVIDERS = ("h1", "h2", "h3", "liar", "copier", "victim", "lone")
COLLATERAL = "5"
STAKE = "100"
#: How long before a chain deadline nodes act by themselves: wide, so a test that moves chain time to just
#: inside a fallback window leaves every party many wall seconds to act before the window closes.
SETTLE_MARGIN_S = 15
WINDOW_S = 40


@dataclass
class Submit:
    """One finished `agora job submit` / `agora job resume` run: exit code, parsed JSON stdout, stderr."""

    rc: int
    out: dict[str, Any]
    stderr: str


@dataclass
class MarketNet:
    """A deployment, one AGORA_HOME with every actor's keystore, the example blobs and a bootstrap node."""

    tmp: Path
    rpc: str
    market: Market  # alice's view of the chain
    addresses: dict[str, str]
    env: dict[str, str]
    spec: Path
    bootstrap: str = ""
    procs: list[Proc] = field(default_factory=list)
    boot: Proc | None = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def create(cls, rpc: str, tmp: Path) -> MarketNet:
        """Deploy, fund, import the dev keys (fast scrypt), make the example blobs in alice's store."""
        w3 = connect(rpc)
        accounts = [Account.from_key(k) for k, _ in DEV_ACCOUNTS]
        deployment = deploy(w3, accounts[0], fund=[a.address for a in accounts[1:9]])
        deployment.save(tmp / "deployments")
        home = tmp / "home"
        for name, i in ACCOUNTS.items():
            wallet.import_private_key(name, DEV_ACCOUNTS[i][0], PASSWORD, keystore_dir=home / "keystores",
                                      iterations=1024)
        alice = Market(ChainClient(w3, deployment, account=accounts[ACCOUNTS["alice"]]))
        alice.approve(deployment.market, to_wei(1_000_000))  # so no submit needs --approve (no stray txs)
        env = {**os.environ, "AGORA_HOME": str(home), "AGORA_PASSWORD": PASSWORD, "AGORA_RPC": rpc,
               "AGORA_DEPLOYMENTS": str(tmp / "deployments"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        for var in ("AGORA_ACCOUNT", "AGORA_BOOTSTRAP"):
            env.pop(var, None)
        (tmp / "logs").mkdir()
        make_examples(home / "blobs", tmp / "specs")
        return cls(tmp=tmp, rpc=rpc, market=alice, env=env, spec=tmp / "specs" / "mlp-inference.yaml",
                   addresses={n: accounts[i].address for n, i in ACCOUNTS.items()})

    def start_bootstrap(self) -> None:
        self.boot = Proc("bootstrap", agora_argv("p2p", "bootstrap", "--listen", "/ip4/127.0.0.1/tcp/0", "--json"),
                         self.env, self.tmp, self.tmp / "logs" / "bootstrap.log").start()
        self.procs.append(self.boot)
        self.bootstrap = self.boot.ready["addrs"][0]

    def node_config(self, name: str, price: str, prices: dict[str, str] | None = None) -> Path:
        """`prices`: kind -> price for every kind served [default: inference only, at `price`]."""
        prices = prices or {"inference": price}
        cfg = self.tmp / f"{name}.yaml"
        cfg.write_text(json.dumps({"account": name, "bootstrap": [self.bootstrap], "kinds": sorted(prices),
                                   "device": "cpu", "prices": prices, "collateral": COLLATERAL,
                                   "stake": STAKE, "capacity": 2, "ops_port": 0, "estimate_base_s": 5,
                                   "settle_margin_s": SETTLE_MARGIN_S}))
        return cfg

    def node(self, name: str, price: str, *, adversary: str | None = None,
             prices: dict[str, str] | None = None) -> NodeProc:
        """A node process object (not started) for account `name`; `adversary` runs _adversary.py instead."""
        cfg = self.node_config(name, price, prices)
        args = ["node", "run", "--config", str(cfg), "--log-format", "json", "--json"]
        if adversary:
            argv = [sys.executable, str(Path(__file__).with_name("_adversary.py")), adversary, *args]
        else:
            argv = agora_argv(*args)
        node = NodeProc(name, argv, self.env, self.tmp, self.tmp / "logs" / f"{name}.log")
        self.procs.append(node)
        return node

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop(signal.SIGTERM)

    # ------------------------------------------------------------------ requester
    def submit_argv(self, *, k: int, max_price: str, out: Path, wait: bool = True, run_seconds: int = 60,
                    window: int = WINDOW_S, bid_window: float = 4.0, grace: float = 3.0) -> list[str]:
        argv = [sys.executable, "-m", "marketplace.cli", "job", "submit", str(self.spec), "--replicas", str(k),
                "--max-price", max_price, "--bid-window", str(bid_window), "--run-seconds", str(run_seconds),
                "--window", str(window), "--grace", str(grace), "--bootstrap", self.bootstrap, "--out", str(out),
                "--account", "alice", "--json"]
        return argv + (["--wait"] if wait else [])

    def requester(self, argv: list[str], name: str = "requester") -> subprocess.Popen[str]:
        """Start a requester command in the background (stdout: its final JSON; stderr: a log)."""
        err = open(self.tmp / "logs" / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=self.env, cwd=self.tmp)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 240, name: str = "requester") -> Submit:
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
            raise AssertionError(f"{name} did not finish within {timeout} s:\n{self.log_tail(name)}") from None
        start = stdout.find("{")  # --json: the command's one JSON document (possibly indented)
        out = json.loads(stdout[start:]) if start >= 0 else {}
        return Submit(rc=int(proc.returncode), out=out, stderr=self.log_tail(name))

    def run_requester(self, argv: list[str], timeout: float = 240, name: str = "requester") -> Submit:
        return self.finish(self.requester(argv, name), timeout, name)

    def requester_db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on alice's requester database (SQLite WAL: readable while it runs)."""
        path = self.tmp / "home" / "requester" / self.addresses["alice"] / "requester.db"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return list(db.execute(sql, args))
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            db.close()

    def last_bid_id(self) -> int:
        rows = self.requester_db("SELECT COALESCE(MAX(id), 0) FROM bids")
        return int(rows[0][0]) if rows else 0

    def kill_after_assignment(self, node: NodeProc, since_bid: int, timeout: float = 120) -> str:
        """SIGKILL `node` once the requester has opened a job assigning it; returns the job id.

        A job as small as the example runs in a fraction of a second, so the node is frozen (SIGSTOP) as soon as
        the requester has received its bid, and killed once the requester's database shows the job opened with
        it among the winners: it dies assigned, before it could fetch or compute anything."""
        addr = self.addresses[node.name]
        got = wait_until(lambda: self.requester_db("SELECT ann_id FROM bids WHERE id > ? AND provider = ?",
                                                   since_bid, addr), timeout, f"{node.name}'s bid", every=0.02)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        ann_id = got[0][0]

        def opened() -> str | None:
            rows = self.requester_db("SELECT job_id, winners, state FROM jobs WHERE ann_id = ?", ann_id)
            if rows and rows[0][2] in ("no-bids", "failed") and not rows[0][0]:
                raise AssertionError(f"the job was not opened: {rows[0]}")
            if rows and rows[0][0] and any(w["provider"] == addr for w in json.loads(rows[0][1])):
                return str(rows[0][0])
            return None

        try:
            return str(wait_until(opened, timeout, f"a job assigning {node.name}"))
        finally:
            node.stop(signal.SIGKILL)

    def log_tail(self, name: str, n: int = 6000) -> str:
        return log_tail(self.tmp / "logs" / f"{name}.log", n)

    # ------------------------------------------------------------------ chain
    def now(self) -> int:
        return self.market.client.timestamp()

    def travel_to(self, timestamp: int) -> int:
        """Move anvil's clock so the latest block is at least `timestamp`; returns the new block time."""
        now = self.now()
        return time_travel(self.rpc, timestamp - now) if timestamp > now else now

    def job(self, job_id: str) -> Any:
        return self.market.job(bytes.fromhex(job_id.removeprefix("0x")))

    def wait_settled(self, job_id: str, timeout: float = 120) -> Any:
        return wait_until(lambda: (v := self.job(job_id)).settled and v, timeout, f"job {job_id} to settle")

    def balances(self) -> dict[str, dict[str, int]]:
        """Per actor: tokens, market balance, their sum, and (providers) registry stake / locked / timesSlashed."""
        m = self.market
        out: dict[str, dict[str, int]] = {}
        for name, addr in self.addresses.items():
            row = {"token": m.token_balance(addr), "mbal": m.market_balance(addr)}
            row["total"] = row["token"] + row["mbal"]
            if name in PROVIDERS:
                info = m.provider_info(addr)
                row.update(stake=int(info["stake"]), locked=int(info["locked"]),
                           slashed=int(info["timesSlashed"]))
            out[name] = row
        return out

    def opened_events(self) -> int:
        """How many JobOpened events this deployment has seen (a job that never opened adds none)."""
        events = self.market.client.market.events.JobOpened()
        return len(events.get_logs(from_block=self.market.client.deployment.block))


def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], who: str, key: str) -> int:
    return after[who][key] - before[who][key]
