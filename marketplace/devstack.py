"""A local development stack as separate processes: chain, deployment, bootstrap node and provider nodes.

The harness of the integration tests, the demo (scripts/demo.py) and the benchmarks (scripts/bench_*.py):

- `Proc`: a long-running `agora` process (or any process following the same convention) whose stdout carries a
  JSON ready record (`{"event": "ready", ...}`) and whose stderr goes to a log file; `NodeProc` adds a provider
  node's operations endpoints (`/jobs`, `/metrics`, ...).
- `read_ready`, `metric`, `log_tail`, `wait_until`: the pieces those are made of, usable on their own.
- `check_conservation`: the token conservation invariant of the market and registry contracts.
- `LocalStack`: one AGORA_HOME and deployments directory on a running chain, driven through the real `agora`
  CLI: deploy, import keys, make the example blobs, start a bootstrap node and provider nodes, stop them all.

Nothing here imports the provider node's code (or torch): nodes run as `agora node run` subprocesses.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["CliError", "LocalStack", "NodeProc", "Proc", "agora_argv", "check_conservation", "log_tail", "metric",
           "parse_metric", "read_ready", "wait_until"]


def agora_argv(*args: str) -> list[str]:
    """The command line of `agora ARGS...` run by this interpreter."""
    return [sys.executable, "-m", "marketplace.cli", *args]


def read_ready(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The first `{"event": "ready", ...}` JSON line `proc` prints on stdout (other lines are skipped).

    RuntimeError when the process exits first or prints none within `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if isinstance(rec, dict) and rec.get("event") == "ready":
                    return dict(rec)
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
    raise RuntimeError(f"printed no ready line within {timeout} s")


def parse_metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent); `labels` must match the sample's exactly."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def metric(ops_url: str, name: str, **labels: str) -> float:
    """One sample of a node's `/metrics` at `ops_url` (its ready record's "ops"); 0 when absent."""
    with urllib.request.urlopen(ops_url + "/metrics", timeout=10) as resp:
        return parse_metric(resp.read().decode(), name, **labels)


def log_tail(path: Path | None, n: int = 4000) -> str:
    """The last `n` characters of a log file ("" when there is none)."""
    return path.read_text(errors="replace")[-n:] if path is not None and path.exists() else ""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError naming `what` on timeout.

    The timeout only guards against a hang; nothing should assert on how long anything took."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Proc:
    """A long-running process whose stdout's first ready record is `ready`; stderr is appended to `log`."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None, log: Path) -> None:
        self.name, self.argv, self.env, self.cwd, self.log = name, argv, dict(env), cwd, log
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, timeout: float = 240) -> Proc:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Proc:
        """Start the process without waiting (several nodes start in parallel; see wait_ready)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=self.env, cwd=self.cwd)
        return self

    def wait_ready(self, timeout: float = 240) -> Proc:
        """Read the ready record (RuntimeError with the log's tail, the process killed, if none comes), then
        keep draining stdout so the process never blocks on a full pipe."""
        assert self.proc is not None, "launch() first"
        try:
            self.ready = read_ready(self.proc, timeout)
        except RuntimeError as exc:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"{self.name}: {exc}\n{self.log_tail()}") from None
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        return self

    @staticmethod
    def _drain(stream: IO[str] | None) -> None:
        try:
            for _ in stream or ():
                pass
        except (ValueError, OSError):  # closed under us
            return

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send `sig` (SIGKILL: dies on the spot) and reap; escalates to SIGKILL if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 4000) -> str:
        return log_tail(self.log, n)


class NodeProc(Proc):
    """A provider node (`agora node run` or a stand-in), with its operations endpoints (ready record "ops")."""

    def get(self, path: str) -> Any:
        """The JSON document of an operations endpoint."""
        with urllib.request.urlopen(self.ready["ops"] + path, timeout=10) as resp:
            return json.loads(resp.read())

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the node's /metrics (0 when absent)."""
        return metric(self.ready["ops"], name, **labels)

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.get("/jobs"))

    def job(self, job_id: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs() if j["job_id"] == job_id.lower()), None)

    def wait_job(self, timeout: float = 120, *, job_id: str | None = None,
                 states: tuple[str, ...] = ()) -> dict[str, Any]:
        """The node's row of `job_id` (or its newest job) once its state is one of `states` (any when empty)."""
        def look() -> dict[str, Any] | None:
            if not self.running:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode if self.proc else None}:\n"
                                     f"{self.log_tail()}")
            rows = self.jobs()
            row = next((j for j in rows if j["job_id"] == job_id.lower()), None) if job_id else (
                rows[0] if rows else None)
            return row if row is not None and (not states or row["state"] in states) else None

        return wait_until(look, timeout, f"{self.name}'s job {job_id or '(any)'} in state {states or 'any'}")


class CliError(RuntimeError):
    """An `agora` command exited non-zero."""

    def __init__(self, args: Iterable[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_, self.returncode, self.stdout, self.stderr = list(args), returncode, stdout, stderr
        super().__init__(f"agora {' '.join(self.args_)} exited with {returncode}\n{stderr.strip()}\n"
                         f"{stdout.strip()}".rstrip())


@dataclass
class LocalStack:
    """One AGORA_HOME (`tmp`/home) and deployments directory on the chain at `rpc`, driven by the `agora` CLI.

    Logs of every process go to `tmp`/logs/NAME.log; `close()` stops every process it started (SIGTERM)."""

    tmp: Path
    rpc: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    bootstrap: str = ""

    @classmethod
    def create(cls, rpc: str, tmp: Path, *, password: str = "devstack-password",
               env: Mapping[str, str] | None = None) -> LocalStack:
        """`env`: extra variables for every command (on top of this process's environment)."""
        full = {**os.environ, "AGORA_RPC": rpc, "AGORA_HOME": str(tmp / "home"),
                "AGORA_DEPLOYMENTS": str(tmp / "deployments"), "AGORA_PASSWORD": password,
                "PYTHONUNBUFFERED": "1", **(env or {})}
        for var in ("AGORA_ACCOUNT", "AGORA_BOOTSTRAP"):
            full.pop(var, None)
        (tmp / "logs").mkdir(parents=True, exist_ok=True)
        return cls(tmp=tmp, rpc=rpc, env=full)

    @property
    def home(self) -> Path:
        return Path(self.env["AGORA_HOME"])

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def specs_dir(self) -> Path:
        """Where `make_examples` writes the example specs (the collab ones in its `collab` folder)."""
        return self.tmp / "specs"

    def log(self, name: str) -> Path:
        return self.tmp / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ one-shot commands
    def cli(self, *args: str, account: str | None = None) -> Any:
        """Run `agora ARGS --json [--account A]` to completion; its parsed JSON output. CliError on failure."""
        argv = agora_argv(*args, "--json", *(["--account", account] if account else []))
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, cwd=self.tmp)
        if proc.returncode != 0:
            raise CliError(args, proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)

    def deploy(self) -> Any:
        """`agora deploy` (token, registry, market, ...): the deployment record."""
        return self.cli("deploy")

    def import_keys(self, keys: Mapping[str, str]) -> dict[str, str]:
        """Import each name -> private key into a keystore (`agora wallet import`); returns name -> address."""
        addresses: dict[str, str] = {}
        for name, key in keys.items():
            keyfile = self.tmp / f"{name}.key"
            keyfile.write_text(key + "\n")
            try:
                addresses[name] = self.cli("wallet", "import", name, "--private-key-file", str(keyfile))["address"]
            finally:
                keyfile.unlink()
        return addresses

    def make_examples(self) -> Path:
        """The example blobs into the home's blob store and the example specs into `specs_dir` (returned)."""
        from marketplace.examples import make_examples

        make_examples(self.blobs_dir, self.specs_dir)
        return self.specs_dir

    # ------------------------------------------------------------------ processes
    def start_bootstrap(self, timeout: float = 240) -> str:
        """Start `agora p2p bootstrap` on a free local port; returns (and keeps) its first address."""
        boot = Proc("bootstrap", agora_argv("p2p", "bootstrap", "--listen", "/ip4/127.0.0.1/tcp/0", "--json"),
                    self.env, self.tmp, self.log("bootstrap"))
        self.procs.append(boot)
        boot.start(timeout)
        self.bootstrap = boot.ready["addrs"][0]
        return self.bootstrap

    def node_config(self, name: str, config: Mapping[str, Any]) -> Path:
        """Write a node configuration for account `name` (bootstrap address filled in unless given)."""
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps({"account": name, "bootstrap": [self.bootstrap], **config}))
        return path

    def node(self, name: str, config: Mapping[str, Any], *, args: Iterable[str] = ("--log-format", "json"),
             argv: list[str] | None = None) -> NodeProc:
        """A node process object (not started) for account `name`: `agora node run --config ... ARGS`, or
        `argv` + ["node", "run", "--config", ..., *ARGS] (a stand-in speaking the same command line)."""
        tail = ["node", "run", "--config", str(self.node_config(name, config)), *args]
        node = NodeProc(name, (argv + tail) if argv else agora_argv(*tail), self.env, self.tmp, self.log(name))
        self.procs.append(node)
        return node

    def start_node(self, name: str, config: Mapping[str, Any], timeout: float = 300, **kw: Any) -> NodeProc:
        """Start a node (see `node`) and wait for its ready record."""
        node = self.node(name, config, **kw)
        node.start(timeout)
        return node

    def close(self) -> dict[str, int | None]:
        """Stop every process started here, newest first (SIGTERM); name -> exit code."""
        codes = {p.name: p.stop(signal.SIGTERM) for p in reversed(self.procs)}
        self.procs.clear()
        return codes


def check_conservation(*, market_tokens: int, registry_tokens: int, escrow: int, market_balances: Iterable[int],
                       stakes: Iterable[tuple[int, int]]) -> None:
    """The JobMarket / ProviderRegistry conservation invariant; AssertionError naming the gap when broken.

    token(market) + token(registry) == live escrow + every market balance + every provider's stake + unbonding,
    and, on its own, token(registry) == the sum of stake + unbonding (`stakes`: (stake, unbonding) pairs)."""
    staked = sum(stake + unbonding for stake, unbonding in stakes)
    held, owed = market_tokens + registry_tokens, escrow + sum(market_balances) + staked
    assert held == owed, f"conservation broken: tokens held {held} != owed {owed} (gap {held - owed})"
    assert registry_tokens == staked, f"registry conservation broken: holds {registry_tokens} != staked {staked}"
