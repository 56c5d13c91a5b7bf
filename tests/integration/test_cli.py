"""The `agora` CLI as a user runs it: subprocesses against a real Anvil, one clear line per known error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.devchain import LocalChain

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "cli-test-password"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """A fresh chain (own process, so deployments don't clash with other modules), deployed, two keystores."""
    with LocalChain("anvil") as chain:
        tmp = tmp_path_factory.mktemp("cli")
        e = {**os.environ, "AGORA_RPC": chain.rpc_url, "AGORA_HOME": str(tmp / "home"),
             "AGORA_DEPLOYMENTS": str(tmp / "deployments"), "AGORA_PASSWORD": PASSWORD}
        run = Runner(e, tmp)
        run.ok("deploy")
        for i, name in enumerate(["alice", "prov"]):
            key = tmp / f"{name}.key"
            key.write_text(chain.dev_private_keys[i + 1])
            run.ok("wallet", "import", name, "--private-key-file", str(key))
        run.chain = chain
        yield run


class Runner:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.chain: LocalChain | None = None

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "marketplace.cli", *args], env=env or self.env,
                              capture_output=True, text=True, cwd=self.tmp, timeout=120)

    def ok(self, *args: str) -> str:
        proc = self(*args)
        assert proc.returncode == 0, f"agora {' '.join(args)} failed: {proc.stderr}"
        return proc.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = self(*args, env=env)
        assert proc.returncode != 0, f"agora {' '.join(args)} should have failed"
        err = proc.stderr.strip()
        assert "Traceback" not in err, err
        assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
        assert err.startswith("error:"), err
        return err

    def balance(self, who: str) -> dict:
        return self.json("token", "balance", "--account", who)


def test_wrong_password_is_one_line(env: Runner) -> None:
    err = env.fails("token", "balance", "--account", "alice", env={**env.env, "AGORA_PASSWORD": "nope"})
    assert "wrong password" in err


def test_no_deployment_for_chain(env: Runner, tmp_path: Path) -> None:
    err = env.fails("token", "balance", "--account", "alice", env={**env.env, "AGORA_DEPLOYMENTS": str(tmp_path)})
    assert "no deployment for chain 31337" in err


def test_unreachable_rpc(env: Runner) -> None:
    err = env.fails("token", "balance", "--account", "alice", "--rpc", "http://127.0.0.1:9")
    assert "cannot reach RPC at http://127.0.0.1:9" in err


def test_insufficient_allowance_names_amounts_and_moves_nothing(env: Runner) -> None:
    spec = "0x" + "11" * 32
    alice = env.json("wallet", "address", "alice")["address"]
    env.ok("provider", "register", "--stake", "200", "--peer-id", "0x0025" + "ab" * 37, "--approve",
           "--account", "prov")
    bid = env.tmp / "bid.json"
    env.ok("bid", "sign", "--spec-hash", spec, "--requester", alice, "--price", "7", "--collateral", "20",
           "--out", str(bid), "--account", "prov")
    assert env.json("bid", "verify", str(bid))[0]["ok"] is True
    before = env.balance("alice")
    err = env.fails("job", "open", "--spec-hash", spec, "--bid", str(bid), "--account", "alice")
    assert "insufficient allowance" in err and "allows 0 AGORA" in err and "needs 7 AGORA" in err
    assert env.balance("alice") == before
    # The same bid then works once approved, and the job settles through the CLI.
    job = env.json("job", "open", "--spec-hash", spec, "--bid", str(bid), "--approve", "--account", "alice")["job_id"]
    assert env.json("job", "status", job)["status"] == "assigned"
    env.ok("provider", "submit", job, "0x" + "22" * 32, "--account", "prov")
    env.ok("job", "accept", job, "--account", "alice")
    status = env.json("job", "status", job)
    assert status["status"] == "settled:completed" and status["settlement"]["paid_mask"] == 1
    # A reverted transaction is decoded into its custom error with values: the bid's nonce is spent.
    err = env.fails("job", "open", "--spec-hash", spec, "--bid", str(bid), "--approve", "--account", "alice")
    assert "MarketBidNonceUsed(" in err and "nonce=" in err
    err = env.fails("job", "accept", job, "--account", "alice")
    assert "already settled" in err
    listed = env.json("job", "list")
    assert any(j["job_id"] == job for j in listed)


def test_insufficient_token_balance_on_transfer(env: Runner) -> None:
    before = env.balance("alice")
    err = env.fails("token", "transfer", "0x" + "33" * 20, "1000000000", "--account", "alice")
    assert "insufficient token balance" not in err or "needs 1000000000 AGORA" in err
    assert "needs 1000000000 AGORA" in err
    assert env.balance("alice") == before


def test_faucet_cap_is_a_decoded_error(env: Runner) -> None:
    err = env.fails("token", "faucet", "--amount", "20000", "--account", "alice")
    assert "TokenFaucetTooMuch(" in err


def test_demo_script_runs_the_whole_lifecycle() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_cli.py"), "--json"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["jobs"]["k1"]["status"] == "settled:completed"
    k3 = report["jobs"]["k3"]
    assert k3["status"] == "settled:completed"
    assert k3["settlement"]["paid_mask"] == 0b011 and k3["settlement"]["slashed_mask"] == 0b100
    delta = {k: int(v) for k, v in report["token_delta_wei"].items()}
    assert delta["prov1"] == 8 * 10**18 and delta["prov2"] == 3 * 10**18 and delta["prov3"] == 0
    assert delta["alice"] == (-5 - 9 + 3 + 30) * 10**18
    assert int(report["reputation"]["prov3"]["times_slashed"]) == 1


def test_global_options_before_or_after_the_subcommand_and_from_env(env: Runner) -> None:
    assert env.chain is not None
    bare = {k: v for k, v in env.env.items() if k not in ("AGORA_RPC", "AGORA_DEPLOYMENTS", "AGORA_ACCOUNT")}
    where = ["--rpc", env.chain.rpc_url, "--deployments", env.env["AGORA_DEPLOYMENTS"], "--account", "alice"]
    after = json.loads(env("token", "balance", "--json", *where, env=bare).stdout)
    before = json.loads(env(*where, "token", "balance", "--json", env=bare).stdout)
    from_env = json.loads(env("token", "balance", "--json", env={**bare, "AGORA_RPC": env.chain.rpc_url,
                                                                    "AGORA_DEPLOYMENTS": env.env["AGORA_DEPLOYMENTS"],
                                                                    "AGORA_ACCOUNT": "alice"}).stdout)
    alice = env.json("wallet", "address", "alice")["address"]
    assert after == before == from_env and after["address"] == alice
    # The command line beats the environment: a dead RPC in the environment, a live one on the command line.
    live = env("token", "balance", "--json", "--rpc", env.chain.rpc_url, "-a", "alice",
               env={**env.env, "AGORA_RPC": "http://127.0.0.1:9"})
    assert live.returncode == 0 and json.loads(live.stdout) == after
    # Unreachable RPC: one line, exit 3.
    dead = env("token", "balance", "-a", "alice", env={**env.env, "AGORA_RPC": "http://127.0.0.1:9"})
    assert dead.returncode == 3 and dead.stderr.startswith("error: cannot reach RPC"), dead.stderr


def test_job_open_json_keys_are_snake_case(env: Runner) -> None:
    opened = env.json("job", "open", "--spec-hash", "0x" + "44" * 32, "--budget", "1", "--approve",
                      "--account", "alice")
    assert set(opened) == {"job_id", "tx", "gas_used"} and opened["gas_used"] > 0
    status = env.json("job", "status", opened["job_id"])
    assert {"job_id", "spec_hash", "committed_mask", "revealed_mask", "challenge_end"} <= set(status)
    assert not [k for k in status if any(c.isupper() for c in k)]
    env.ok("job", "cancel", opened["job_id"], "--account", "alice")
