"""Shared CLI plumbing: one clear line per known error, JSON output, spinners."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from marketplace.errors import AgoraError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn `AgoraError` into one red line on stderr and a non-zero exit; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AgoraError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Print `obj` as JSON on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """Show a spinner on stderr while waiting (receipts, chain start-up)."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


# ---------------------------------------------------------------- shared options and connections
from pathlib import Path
from typing import Annotated

from marketplace.config import load_settings

RpcOpt = Annotated[str | None, typer.Option("--rpc", help="JSON-RPC URL [env AGORA_RPC, default http://127.0.0.1:8545]")]
DeploymentsOpt = Annotated[Path | None, typer.Option("--deployments", help="Folder of <chainId>.json files [env AGORA_DEPLOYMENTS, default ./deployments]")]
AccountOpt = Annotated[str | None, typer.Option("--account", "-a", help="Keystore name or address [env AGORA_ACCOUNT]")]
PasswordFileOpt = Annotated[Path | None, typer.Option("--password-file", help="File whose first line is the keystore password [or env AGORA_PASSWORD, or a prompt]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout")]


def open_market(rpc: str | None, deployments: Path | None, account: str | None, password_file: Path | None,
                *, need_account: bool = True):  # -> Market (imported lazily to keep `agora --help` fast)
    """Connect, load the deployment, unlock the account (when needed) and return a `Market`."""
    from marketplace.client import ChainClient
    from marketplace.market import Market

    settings = load_settings()
    signer = None
    if need_account or account or settings.account:
        from marketplace.wallet import load_account

        signer = load_account(account=account, password_file=password_file, settings=settings)
    with spinner("connecting"):
        client = ChainClient.open(rpc or settings.rpc_url, deployments or settings.deployments_dir, account=signer)
    return Market(client)


def parse_amount(text: str) -> int:
    """'1.5' tokens -> base units; raises ConfigError on nonsense or negatives."""
    from decimal import Decimal, InvalidOperation

    from marketplace.errors import ConfigError
    from marketplace.types import to_wei

    try:
        if Decimal(text) < 0:
            raise ConfigError(f"amount must not be negative: {text}")
        return to_wei(text)
    except InvalidOperation:
        raise ConfigError(f"not an amount of tokens: {text!r}") from None


def parse_b32(text: str, what: str) -> bytes:
    from marketplace.errors import ConfigError
    from marketplace.types import b32

    try:
        return b32(text)
    except ValueError:
        raise ConfigError(f"{what} must be 32 bytes of 0x-hex, got {text!r}") from None


def tx_line(action: str, result) -> None:
    console.print(f"[green]✓[/green] {action}  tx {result.tx_hash}  gas {result.gas_used:,}", highlight=False)
