"""`agora chain`: run a local development chain (anvil, ganache or hardhat node) in the foreground."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import typer
from rich.console import Console

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, emit_json, handle_errors, spinner
from marketplace.devchain import DEV_ACCOUNTS, LocalChain
from marketplace.errors import ChainError, ConfigError

chain_app = typer.Typer(help="Run a local development chain.", no_args_is_help=True)
app.add_typer(chain_app, name="chain")

out = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True)


def _chain_info(chain: LocalChain) -> dict[str, object]:
    return {
        "kind": chain.kind,
        "rpc_url": chain.rpc_url,
        "chain_id": chain.chain_id,
        "pid": chain.pid,
        "accounts": [{"address": addr, "private_key": key} for key, addr in DEV_ACCOUNTS],
        "note": "well-known public dev keys: never use them on a real network",
    }


def _print_info(chain: LocalChain) -> None:
    out.print(f"[bold green]{chain.kind}[/bold green] is running")
    out.print(f"  RPC URL   {chain.rpc_url}")
    out.print(f"  chain id  {chain.chain_id}")
    out.print("Dev accounts (10000 ETH each): index, address, private key")
    for i, (key, addr) in enumerate(DEV_ACCOUNTS):
        out.print(f"  ({i}) {addr}  {key}")
    out.print("[yellow]These are the well-known public dev keys of the mnemonic "
              "'test test ... junk': anyone can spend from them; never use them on a real network.[/yellow]")
    out.print(f"Press Ctrl-C to stop. (e.g. export AGORA_RPC={chain.rpc_url})")


@chain_app.command("up")
@handle_errors
def up(
    ganache: bool = typer.Option(False, "--ganache", help="Run ganache (chain id 1337) instead of anvil."),
    hardhat: bool = typer.Option(False, "--hardhat", help="Run a hardhat node (chain id 31337) instead of anvil."),
    port: int = typer.Option(8545, "--port", help="Port on 127.0.0.1; 0 picks a free one."),
    json_out: JsonOpt = False,
) -> None:
    """Start a local chain and keep it running until Ctrl-C or SIGTERM.

    The default is anvil (chain id 31337). All kinds share the same ten funded dev accounts.
    """
    if ganache and hardhat:
        raise ConfigError("choose at most one of --ganache and --hardhat")
    kind = "ganache" if ganache else "hardhat" if hardhat else "anvil"
    chain = LocalChain(kind, port)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with spinner(f"starting {kind} ..."):
            chain.start()
        if json_out:
            emit_json(_chain_info(chain))
        else:
            _print_info(chain)
        sys.stdout.flush()
        while not stop_requested.wait(0.5):
            if not chain.running:
                raise ChainError(f"{kind} (pid {chain.pid}) exited unexpectedly; log tail:\n{chain.log_tail()}")
    finally:
        chain.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err_console.print(f"{kind} stopped")
