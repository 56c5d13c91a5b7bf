"""`agora deploy`: token, registry and market onto any EVM JSON-RPC endpoint."""

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
)


def dev_accounts(count: int = 10) -> list:
    """The public, well-known accounts every local dev chain (anvil, ganache, hardhat) is started with."""
    from eth_account import Account

    from marketplace.devchain import DEV_ACCOUNTS

    return [Account.from_key(key) for key, _ in DEV_ACCOUNTS[:count]]


@app.command("deploy")
@handle_errors
def deploy_cmd(
    ctx: typer.Context,
    token: Annotated[str | None, typer.Option(help="Use this existing ERC-20 instead of deploying AgoraToken")] = None,
    min_stake: Annotated[str, typer.Option(help="Minimum provider stake, tokens")] = "100",
    unbonding_delay: Annotated[int, typer.Option(help="Seconds between unstake request and withdrawal")] = 3600,
    min_run: Annotated[int, typer.Option(help="Shortest job deadline, seconds from opening")] = 10,
    max_run: Annotated[int, typer.Option(help="Longest job deadline, seconds")] = 30 * 24 * 3600,
    min_window: Annotated[int, typer.Option(help="Shortest challenge/reveal window, seconds")] = 5,
    max_window: Annotated[int, typer.Option(help="Longest challenge/reveal window, seconds")] = 7 * 24 * 3600,
    json_out: JsonOpt = False,
) -> None:
    """Deploy the contracts and write deployments/<chainId>.json.

    On a dev chain (31337, 1337) without --account the first well-known dev account deploys and the ten dev
    accounts receive 100,000 tokens each. Elsewhere --account is required.
    """
    from marketplace.client import connect
    from marketplace.config import DEV_CHAIN_IDS, load_settings
    from marketplace.deployer import deploy
    from marketplace.deployment import MarketParams
    from marketplace.errors import ConfigError

    min_stake_wei = parse_amount(min_stake)  # before connecting: a bad amount deploys nothing
    g, settings = global_options(ctx), load_settings()
    url = g.rpc or settings.rpc_url
    w3 = connect(url)
    dev = w3.eth.chain_id in DEV_CHAIN_IDS
    if g.account or settings.account:
        from marketplace.wallet import load_account

        deployer = load_account(account=g.account, password_file=g.password_file, settings=settings)
    elif dev:
        deployer = dev_accounts(1)[0]
    else:
        raise ConfigError(f"chain {w3.eth.chain_id} is not a dev chain: pass --account with a funded keystore")
    params = MarketParams(min_stake=min_stake_wei, unbonding_delay=unbonding_delay, min_run=min_run,
                          max_run=max_run, min_window=min_window, max_window=max_window)
    fund = [a.address for a in dev_accounts()] if dev and token is None else []
    with spinner("deploying") as _:
        deployment = deploy(w3, deployer, params=params, token=token, fund=fund,
                            progress=lambda m: console.print(f"  {m}", highlight=False))
    path = deployment.save(g.deployments or settings.deployments_dir)
    if json_out:
        emit_json({**deployment.to_json(), "file": str(path)})
    else:
        console.print(f"[green]✓[/green] deployed on chain {deployment.chain_id}\n  token     {deployment.token}\n"
                      f"  registry  {deployment.registry}\n  market    {deployment.market}\n  collab    {deployment.collab}\n  wrote {path}",
                      highlight=False)
