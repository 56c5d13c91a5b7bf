"""The `agora` CLI conventions without a chain: global options anywhere, env vars, snake_case JSON, hidden
aliases, every command behind `handle_errors`, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from marketplace.cli import _register, app
from marketplace.cli._common import (
    EXIT_UNREACHABLE,
    GlobalOptions,
    emit_json,
    global_options,
    handle_errors,
    hoist_global_options,
    snake_case,
    snake_keys,
)
from marketplace.errors import AgoraError, ChainError, ConfigError, RpcUnreachableError

_register()

ENV_VARS = ("AGORA_RPC", "AGORA_DEPLOYMENTS", "AGORA_ACCOUNT", "AGORA_PASSWORD_FILE")


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, GlobalOptions]:
    """`agora wallet list` with its body replaced by one that records the global options it receives."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    got: dict[str, GlobalOptions] = {}
    wallet_app = next(g.typer_instance for g in app.registered_groups if g.name == "wallet")
    info = next(c for c in wallet_app.registered_commands if c.name == "list")

    @handle_errors
    def record(ctx: typer.Context) -> None:
        got["opts"] = global_options(ctx)

    monkeypatch.setattr(info, "callback", record)
    return got


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, args, env=env)


@pytest.mark.parametrize("args", [
    ["--rpc", "http://h:1", "--deployments", "dep", "-a", "alice", "--password-file", "pw", "-v", "wallet", "list"],
    ["wallet", "list", "--rpc", "http://h:1", "--deployments", "dep", "-a", "alice", "--password-file", "pw", "-v"],
    ["wallet", "--rpc=http://h:1", "list", "--deployments=dep", "-aalice", "--password-file=pw", "--verbose"],
])
def test_global_options_before_or_after_the_subcommand(seen: dict[str, GlobalOptions], args: list[str]) -> None:
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    assert seen["opts"] == GlobalOptions(rpc="http://h:1", deployments=Path("dep"), account="alice",
                                         password_file=Path("pw"), verbose=True,
                                         given=frozenset({"rpc", "deployments", "account", "password_file", "verbose"}))


def test_global_options_from_env_and_the_command_line_wins(seen: dict[str, GlobalOptions]) -> None:
    env = {"AGORA_RPC": "http://env:2", "AGORA_DEPLOYMENTS": "envdep", "AGORA_ACCOUNT": "bob",
           "AGORA_PASSWORD_FILE": "envpw"}
    assert _invoke(["wallet", "list"], env=env).exit_code == 0
    assert seen["opts"] == GlobalOptions(rpc="http://env:2", deployments=Path("envdep"), account="bob",
                                         password_file=Path("envpw"))
    assert _invoke(["wallet", "list", "--account", "carol"], env=env).exit_code == 0
    assert seen["opts"].account == "carol" and seen["opts"].rpc == "http://env:2"
    assert seen["opts"].given == frozenset({"account"})


def test_hoisting_stops_at_double_dash_and_keeps_other_arguments() -> None:
    args = ["job", "submit", "spec.yaml", "-k", "3", "--rpc", "U", "--json", "--", "--account", "x"]
    assert hoist_global_options(args) == ["--rpc", "U", "job", "submit", "spec.yaml", "-k", "3", "--json", "--",
                                          "--account", "x"]
    # A missing value goes to the front, where the root command reports it as a usage error.
    res = _invoke(["wallet", "list", "--rpc"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "Option '--rpc' requires an argument" in res.output, res.output


def test_root_help_documents_placement_and_env_vars() -> None:
    res = _invoke(["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "before or after the command" in res.output
    for var in ENV_VARS:
        assert var in res.output
    sub = _invoke(["job", "open", "--help"], env={"COLUMNS": "200"})
    assert sub.exit_code == 0 and "see `agora --help`" in sub.output and "--rpc" not in sub.output.split("Global")[0]


def test_snake_case_keys() -> None:
    assert [snake_case(k) for k in ("gasUsed", "jobId", "paidMask", "unbondingReadyAt", "wall_s", "ETH",
                                    "0xAbC", "sha256:ab", "k")] == \
        ["gas_used", "job_id", "paid_mask", "unbonding_ready_at", "wall_s", "ETH", "0xAbC", "sha256:ab", "k"]
    doc = {"jobId": "0x1", "settlement": {"paidMask": 3, "outputsVerified": True},
           "stages": [{"resultHash": "0x2", "outputs": {"myWeights": "sha256:1"}, "metrics": {"valAcc": 0.5}}],
           "jobs": {"0xab": {"annId": "a"}}}
    assert snake_keys(doc) == {"job_id": "0x1", "settlement": {"paid_mask": 3, "outputs_verified": True},
                               "stages": [{"result_hash": "0x2", "outputs": {"myWeights": "sha256:1"},
                                           "metrics": {"valAcc": 0.5}}],
                               "jobs": {"0xab": {"ann_id": "a"}}}


def test_emit_json_prints_snake_case(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json({"jobId": "0x01", "tx": "0x02", "gasUsed": 21000})
    assert json.loads(capsys.readouterr().out) == {"job_id": "0x01", "tx": "0x02", "gas_used": 21000}


def test_blob_list_and_its_hidden_ls_alias(tmp_path: Path) -> None:
    store = tmp_path / "blobs"
    import numpy as np

    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.float32))
    add = _invoke(["blob", "add", str(tmp_path / "x.npy"), "--from-npy", "--store", str(store), "--json"])
    assert add.exit_code == 0, add.output
    blob_id = json.loads(add.stdout)[0]["id"]
    listed = _invoke(["blob", "list", "--store", str(store), "--json"])
    old = _invoke(["blob", "ls", "--store", str(store), "--json"])
    assert listed.exit_code == old.exit_code == 0
    assert [b["id"] for b in json.loads(listed.stdout)] == [b["id"] for b in json.loads(old.stdout)] == [blob_id]
    names = re.findall(r"^\W*(\w+) ", _invoke(["blob", "--help"], env={"COLUMNS": "200"}).output, re.M)
    assert "list" in names and "ls" not in names


def test_withdraw_lives_in_token_and_the_old_spelling_is_hidden() -> None:
    listed = re.compile(r"^\W*(\w+) ", re.M)  # the first word of each line: command names in the listings
    assert "withdraw" not in listed.findall(_invoke(["--help"], env={"COLUMNS": "200"}).output)
    assert {"deposit", "withdraw"} <= set(listed.findall(_invoke(["token", "--help"], env={"COLUMNS": "200"}).output))
    # Both spellings run the same command: it parses and gets as far as unlocking the account.
    for args in (["token", "withdraw"], ["withdraw"]):
        res = _invoke([*args, "5", "--account", "nobody"], env={"AGORA_HOME": "/nonexistent-agora-home"})
        assert res.exit_code == 1 and res.output.startswith("error:") and "nobody" in res.output, res.output


def _commands(t: typer.Typer, prefix: str = "") -> list[tuple[str, Any]]:
    out = [(f"{prefix}{c.name or c.callback.__name__}", c.callback) for c in t.registered_commands]
    for g in t.registered_groups:
        out += _commands(g.typer_instance, f"{prefix}{g.name} ")
    return out


def test_every_command_is_wrapped_in_handle_errors() -> None:
    commands = _commands(app)
    assert len(commands) > 40
    unwrapped = [name for name, cb in commands if not getattr(cb, "handles_errors", False)]
    assert unwrapped == []


def test_exit_codes() -> None:
    assert AgoraError.exit_code == 1 and ConfigError.exit_code == 2
    assert RpcUnreachableError.exit_code == ChainError.exit_code == EXIT_UNREACHABLE == 3

    @handle_errors
    def boom() -> None:
        raise RpcUnreachableError("cannot reach RPC at http://x")

    with pytest.raises(typer.Exit) as exc:
        boom()
    assert exc.value.exit_code == 3


def test_verbose_adds_the_traceback_to_the_one_line(tmp_path: Path) -> None:
    env = {"AGORA_HOME": str(tmp_path)}
    quiet = _invoke(["wallet", "address", "nobody"], env=env)
    loud = _invoke(["wallet", "address", "nobody", "--verbose"], env=env)
    assert quiet.exit_code == loud.exit_code == 1
    assert quiet.output.startswith("error:") and "Traceback" not in quiet.output
    assert "Traceback" in loud.output and loud.output.strip().splitlines()[-1].startswith("error:")
