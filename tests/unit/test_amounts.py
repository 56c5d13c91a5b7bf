"""Token amounts are exact: an amount with more decimals than the token has, or one that is not a finite number,
is refused with one clear line, never rounded into another amount and sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketplace.cli import _register, app
from marketplace.cli._common import parse_amount
from marketplace.errors import ConfigError
from marketplace.types import from_wei, to_wei

_register()  # the command modules, as `main()` loads them

TOO_PRECISE = "1.0000000000000000001"  # 19 decimals: 10^-19 is below the token's smallest unit


@pytest.mark.parametrize(("text", "wei"), [
    ("1.5", 1_500_000_000_000_000_000), ("0.000000000000000001", 1), ("1e-18", 1), ("2", 2 * 10**18),
    ("1.000000000000000000", 10**18), (" 3 ", 3 * 10**18), ("0", 0),
])
def test_exact_amounts_convert_exactly(text: str, wei: int) -> None:
    assert to_wei(text) == wei
    assert parse_amount(text.strip()) == wei
    assert to_wei(from_wei(wei)) == wei


@pytest.mark.parametrize(("text", "says"), [
    (TOO_PRECISE, "more than 18 decimals"), ("0.0000000000000000005", "more than 18 decimals"),
    ("inf", "not a finite amount"), ("-inf", "not a finite amount"), ("nan", "not a finite amount"),
    ("1,5", "not an amount"), ("", "not an amount"),
])
def test_inexact_or_non_finite_amounts_are_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        to_wei(text)
    with pytest.raises(ConfigError) as err:
        parse_amount(text)
    assert "\n" not in str(err.value)


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(ConfigError, match="must not be negative"):
        parse_amount("-1")


@pytest.mark.parametrize("args", [
    ["token", "faucet", "--amount", TOO_PRECISE],
    ["token", "transfer", "0x0000000000000000000000000000000000000001", TOO_PRECISE],
    ["deploy", "--min-stake", TOO_PRECISE],
])
def test_the_cli_refuses_a_too_precise_amount_before_connecting(args: list[str], tmp_path: Path) -> None:
    """Nothing to send to: the RPC URL is unreachable, so any attempt to connect would fail differently (exit 3).
    The amount is refused first, as a usage error naming it."""
    env = {"AGORA_HOME": str(tmp_path), "AGORA_RPC": "http://127.0.0.1:1", "AGORA_PASSWORD": "x"}
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code != 0 and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    out = res.output
    assert "Traceback" not in out
    assert TOO_PRECISE in out and "more than 18 decimals" in out, out


def test_a_node_config_with_a_too_precise_collateral_is_refused(tmp_path: Path) -> None:
    from node.agent.config import load_config

    cfg = tmp_path / "node.yaml"
    cfg.write_text(f'account: prov1\nprices: {{inference: "1"}}\ncollateral: "{TOO_PRECISE}"\n')
    with pytest.raises(ConfigError, match="18 decimals"):
        load_config(cfg, env={})


def test_a_pipeline_with_a_too_precise_budget_is_invalid(tmp_path: Path) -> None:
    from marketplace.errors import PipelineError
    from marketplace.pipeline import load_pipeline

    f = tmp_path / "p.yaml"
    f.write_text(f'name: p\nbudget: "{TOO_PRECISE}"\nstages:\n  a:\n    spec: missing.yaml\n')
    with pytest.raises(PipelineError, match="budget: .*more than 18 decimals") as err:
        load_pipeline(f)
    assert "\n" not in str(err.value)
