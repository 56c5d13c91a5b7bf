"""Local development chains (anvil, ganache, hardhat node) run from the repository's pinned npm packages.

`LocalChain` starts one as a child process in its own process group on 127.0.0.1, waits until it answers
`eth_chainId`, and stops the whole group on `stop()`, on leaving a `with` block, or at interpreter exit.
Every kind has the same ten dev accounts (the well-known "test test ... junk" mnemonic, 10000 ETH each).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from marketplace.errors import ChainError, RpcUnreachableError

ChainKind = Literal["anvil", "ganache", "hardhat"]
KINDS: tuple[str, ...] = ("anvil", "ganache", "hardhat")
CHAIN_IDS: dict[str, int] = {"anvil": 31337, "ganache": 1337, "hardhat": 31337}
START_TIMEOUTS: dict[str, float] = {"anvil": 10.0, "ganache": 10.0, "hardhat": 30.0}
DEV_MNEMONIC = "test test test test test test test test test test test junk"
# (private key, address) of m/44'/60'/0'/0/{0..9} of DEV_MNEMONIC: public, well-known, for local chains only.
DEV_ACCOUNTS: tuple[tuple[str, str], ...] = (
    ("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),  # noqa: E501
    ("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),  # noqa: E501
    ("0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),  # noqa: E501
    ("0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6", "0x90F79bf6EB2c4f870365E785982E1f101E93b906"),  # noqa: E501
    ("0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a", "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),  # noqa: E501
    ("0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba", "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"),  # noqa: E501
    ("0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e", "0x976EA74026E726554dB657fA54763abd0C3a0aa9"),  # noqa: E501
    ("0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356", "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955"),  # noqa: E501
    ("0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97", "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"),  # noqa: E501
    ("0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6", "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"),  # noqa: E501
)
# Hardhat node runs with this config, not the repository's: a node needs no compiler settings, and a fixed
# config keeps chain id and accounts the same whatever the project config says.
_HARDHAT_CONFIG = (
    "module.exports = { networks: { hardhat: { chainId: 31337, "
    f"accounts: {{ mnemonic: {json.dumps(DEV_MNEMONIC)}, count: 10, accountsBalance: '10000000000000000000000' }}"
    " } } };\n"
)

_LIVE: set[LocalChain] = set()


def find_node_modules() -> Path:
    """The `node_modules` holding the pinned chains: `$AGORA_NODE_MODULES`, else the nearest directory above
    this package or the working directory that has both `package.json` and `node_modules`.

    Raises ChainError if none is found.
    """
    if override := os.environ.get("AGORA_NODE_MODULES"):
        return Path(override).expanduser().resolve()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (d / "package.json").is_file() and (d / "node_modules").is_dir():
                return d / "node_modules"
    raise ChainError("no node_modules found next to a package.json: run `npm ci` in the repository root "
                     "(or set AGORA_NODE_MODULES)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:`port` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def rpc_call(rpc_url: str, method: str, params: list[Any] | None = None, timeout: float = 5.0) -> Any:
    """One JSON-RPC request over HTTP; returns `result`.

    Raises RpcUnreachableError if the endpoint does not answer, ChainError if it answers with an error.
    """
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(rpc_url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise RpcUnreachableError(f"{rpc_url} does not answer {method}: {err}") from err
    if "error" in reply:
        raise ChainError(f"{method} failed on {rpc_url}: {reply['error']}")
    return reply.get("result")


def mine(rpc_url: str) -> int:
    """Mine one block (`evm_mine`); returns the new block number. Raises as `rpc_call`."""
    rpc_call(rpc_url, "evm_mine")
    return int(rpc_call(rpc_url, "eth_blockNumber"), 16)


def time_travel(rpc_url: str, seconds: int) -> int:
    """Move the chain clock forward by `seconds` and mine a block; returns that block's timestamp.

    Works on anvil, ganache and hardhat. Raises ValueError for negative seconds, else as `rpc_call`.
    """
    if seconds < 0:
        raise ValueError("time_travel only goes forward")
    rpc_call(rpc_url, "evm_increaseTime", [int(seconds)])
    rpc_call(rpc_url, "evm_mine")
    return int(rpc_call(rpc_url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


class LocalChain:
    """A dev chain process. Use as a context manager, or call `start()` and `stop()`.

    `kind` is "anvil" (default), "ganache" or "hardhat"; `port=0` picks a free port.
    """

    def __init__(self, kind: ChainKind | str = "anvil", port: int = 0, *, start_timeout: float | None = None,
                 node_modules: Path | None = None) -> None:
        if kind not in KINDS:
            raise ChainError(f"unknown chain kind {kind!r}: choose one of {', '.join(KINDS)}")
        if not 0 <= port <= 65535:
            raise ChainError(f"port {port} is out of range")
        self.kind: str = kind
        self.chain_id: int = CHAIN_IDS[kind]
        self.port: int = port
        self.start_timeout = start_timeout or START_TIMEOUTS[kind]
        self._node_modules = node_modules
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    # -- properties -------------------------------------------------------------------------------------
    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._tmp / "chain.log" if self._tmp else None

    @property
    def dev_private_keys(self) -> list[str]:
        return [key for key, _ in DEV_ACCOUNTS]

    @property
    def dev_accounts(self) -> list[str]:
        return [addr for _, addr in DEV_ACCOUNTS]

    # -- life cycle -------------------------------------------------------------------------------------
    def _command(self, nm: Path) -> tuple[list[str], Path]:
        """The argv and working directory for this kind. Raises ChainError if a binary is missing."""
        port = str(self.port)
        if self.kind == "anvil":
            native = sorted(nm.glob("@foundry-rs/anvil-*/bin/anvil"))
            binary = native[0] if native else nm / ".bin" / "anvil"
            _require(binary, "anvil", nm)
            return [str(binary), "--host", "127.0.0.1", "--port", port, "--chain-id", str(self.chain_id),
                    "--mnemonic", DEV_MNEMONIC, "--accounts", "10", "--balance", "10000"], nm.parent
        node = shutil.which("node")
        if node is None:
            raise ChainError(f"{self.kind} needs Node.js (`node`) on PATH")
        if self.kind == "ganache":
            cli = nm / "ganache" / "dist" / "node" / "cli.js"
            _require(cli, "ganache", nm)
            return [node, str(cli), "--server.host", "127.0.0.1", "--server.port", port,
                    "--chain.chainId", str(self.chain_id), "--wallet.mnemonic", DEV_MNEMONIC,
                    "--wallet.totalAccounts", "10", "--wallet.defaultBalance", "10000",
                    "--miner.instamine", "eager", "--logging.quiet"], nm.parent
        cli = nm / "hardhat" / "internal" / "cli" / "cli.js"
        _require(cli, "hardhat", nm)
        assert self._tmp is not None
        config = self._tmp / "hardhat.config.js"
        config.write_text(_HARDHAT_CONFIG)
        # Hardhat refuses to run unless the working directory resolves the local hardhat package.
        return [node, str(cli), "node", "--config", str(config), "--hostname", "127.0.0.1", "--port", port], \
            nm.parent

    def start(self) -> Self:
        """Start the chain and wait until it answers `eth_chainId` with the expected id.

        Raises ChainError if the binary is missing, the port is taken, or the process dies or never answers
        (the message ends with the tail of its log).
        """
        if self.running:
            return self
        nm = self._node_modules or find_node_modules()
        auto_port = self.port == 0
        for attempt in range(3):
            if auto_port:
                self.port = free_port()
            elif not port_is_free(self.port):
                raise ChainError(f"port {self.port} on 127.0.0.1 is already in use")
            self._tmp = Path(tempfile.mkdtemp(prefix=f"agora-{self.kind}-"))
            try:
                argv, cwd = self._command(nm)
                env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true", "NO_COLOR": "1"}
                with open(self._tmp / "chain.log", "wb") as log:
                    self._proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as err:
                self._cleanup_tmp()
                raise ChainError(f"cannot start {self.kind}: {err}") from err
            except ChainError:
                self._cleanup_tmp()
                raise
            _LIVE.add(self)
            try:
                self._wait_ready()
                return self
            except ChainError:
                tail = self.log_tail().lower()
                self.stop()
                if not (auto_port and ("in use" in tail or "eaddrinuse" in tail) and attempt < 2):
                    raise
            except BaseException:  # Ctrl-C while waiting: leave nothing running
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ChainError(f"{self.kind} exited with code {self._proc.returncode} during start-up; "
                                 f"log tail:\n{self.log_tail()}")
            try:
                got = int(rpc_call(self.rpc_url, "eth_chainId", timeout=1.0), 16)
            except (RpcUnreachableError, ChainError) as err:
                last = err
                time.sleep(0.05)
                continue
            if got != self.chain_id:
                raise ChainError(f"{self.kind} on {self.rpc_url} answers chain id {got}, expected "
                                 f"{self.chain_id} (another chain on this port?)")
            return
        raise ChainError(f"{self.kind} did not answer eth_chainId on {self.rpc_url} within "
                         f"{self.start_timeout:.0f} s ({last}); log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the chain's log (stdout and stderr), for error messages."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the chain's process group, wait up to `timeout` s, then SIGKILL it. Idempotent."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            _kill_group(proc, timeout)
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"LocalChain({self.kind!r}, {self.rpc_url}, chain id {self.chain_id}, {state})"


def _require(path: Path, what: str, nm: Path) -> None:
    if not path.exists():
        raise ChainError(f"{what} not found under {nm}: run `npm ci` in the repository root "
                         "(or point AGORA_NODE_MODULES at a node_modules that has it)")


def _kill_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate the process group led by `proc`, then sweep stragglers with SIGKILL."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone: kill anything left in its group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


def live_chains() -> list[LocalChain]:
    """Chains started in this process and not yet stopped."""
    return list(_LIVE)


def stop_all() -> None:
    """Stop every chain this process started (registered with atexit)."""
    for chain in list(_LIVE):
        chain.stop()


atexit.register(stop_all)
