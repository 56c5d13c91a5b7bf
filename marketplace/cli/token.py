"""`agora token ...`: balances, faucet, transfers, approvals, and the market balance (deposit, withdraw)."""

from __future__ import annotations

from typing import Annotated

import typer

from marketplace.cli import app
from marketplace.cli._common import (
    JsonOpt,
    console,
    emit_json,
    global_options,
    handle_errors,
    parse_amount,
    spinner,
    tx_line,
)

token_app = typer.Typer(help="ETH and token balances, dev faucet, transfers, approvals; deposit into and withdraw "
                        "from the market balance.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _spender(market, name: str) -> str:
    aliases = {"market": market.client.deployment.market, "registry": market.client.deployment.registry}
    return aliases.get(name.lower(), name)


@token_app.command("balance")
@handle_errors
def balance(ctx: typer.Context, address: Annotated[str | None, typer.Argument(help="Address (default: your account)")] = None,
            json_out: JsonOpt = False) -> None:
    """ETH, token and market (withdrawable) balance of an address."""
    from marketplace.types import from_wei

    market = global_options(ctx).market(need_account=address is None, account=True if address is None else None)
    who = market.client.w3.to_checksum_address(address or market.address)
    eth = market.client.w3.eth.get_balance(who)
    tok, inner = market.token_balance(who), market.market_balance(who)
    allow = market.allowance(who, market.client.deployment.market)
    if json_out:
        emit_json({"address": who, "eth_wei": str(eth), "token_wei": str(tok), "market_balance_wei": str(inner),
                   "market_allowance_wei": str(allow)})
        return
    console.print(f"{who}\n  ETH     {from_wei(eth)}\n  AGORA   {from_wei(tok)}\n"
                  f"  market  {from_wei(inner)} (withdrawable)\n  allowance to market {from_wei(allow)}",
                  highlight=False)


@token_app.command("faucet")
@handle_errors
def faucet(ctx: typer.Context, amount: Annotated[str, typer.Option(help="Tokens to mint (at most 10000)")] = "1000",
           to: Annotated[str | None, typer.Option(help="Recipient (default: your account)")] = None) -> None:
    """Mint test tokens. Works on dev chains (31337, 1337) only; refuses anywhere else."""
    from marketplace.config import DEV_CHAIN_IDS
    from marketplace.errors import ConfigError

    value = parse_amount(amount)  # before connecting: a bad amount is refused whatever the chain's state
    market = global_options(ctx).market()
    if market.client.chain_id not in DEV_CHAIN_IDS:
        raise ConfigError(f"the faucet works on dev chains only (31337, 1337); this is chain {market.client.chain_id}")
    with spinner("waiting for receipt"):
        tx_line("faucet", market.faucet(value, to))


@token_app.command("transfer")
@handle_errors
def transfer(ctx: typer.Context, to: str, amount: str) -> None:
    """Send tokens to an address."""
    value = parse_amount(amount)
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("transfer", market.transfer(to, value))


@token_app.command("approve")
@handle_errors
def approve(ctx: typer.Context, spender: Annotated[str, typer.Argument(help="'market', 'registry' or an address")], amount: str) -> None:
    """Allow the market (job escrow) or the registry (stake) to pull tokens."""
    value = parse_amount(amount)
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("approve", market.approve(_spender(market, spender), value))


@token_app.command("deposit")
@handle_errors
def deposit(ctx: typer.Context, amount: str) -> None:
    """Move tokens into your market balance (jobs are funded from it first)."""
    value = parse_amount(amount)
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("deposit", market.deposit(value))


@token_app.command("withdraw")
@handle_errors
def withdraw(ctx: typer.Context, amount: Annotated[str | None, typer.Argument(help="Tokens (default: everything)")] = None,
             json_out: JsonOpt = False) -> None:
    """Withdraw your market balance: earnings, refunds and compensation."""
    value = parse_amount(amount) if amount else None
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        result = market.withdraw(value)
    if json_out:
        emit_json({"tx": result.tx_hash, "gas_used": result.gas_used})
    else:
        tx_line("withdraw", result)


# The old top-level spelling, kept for scripts written before `agora token withdraw`.
app.command("withdraw", hidden=True, help="Old spelling of `agora token withdraw`.")(withdraw)
