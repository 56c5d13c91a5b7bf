"""Shared CLI plumbing: global options, one clear line per known error, exit codes, JSON output, spinners."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from marketplace.config import load_settings
from marketplace.errors import AgoraError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes of every `agora` command.
EXIT_OK = 0
EXIT_USER_ERROR = 1  # a known error: bad input, wrong password, insufficient funds, a reverted transaction ...
EXIT_USAGE = 2  # bad options or configuration (Click's usage errors exit 2 as well)
EXIT_UNREACHABLE = 3  # the chain or its JSON-RPC endpoint cannot be reached (or a local chain cannot start)
EXIT_JOB_FAILED = 4  # a job (or pipeline stage) ran but did not end with a verified result


# ---------------------------------------------------------------- global options
@dataclass(frozen=True)
class GlobalOptions:
    """The root options shared by every command (`ctx.obj`): given on the command line or by `AGORA_*`."""

    rpc: str | None = None
    deployments: Path | None = None
    account: str | None = None
    password_file: Path | None = None
    verbose: bool = False
    #: Names of the options given on the command line (not taken from the environment).
    given: frozenset[str] = field(default_factory=frozenset)

    def agora(self, *, need_account: bool = True, account: str | None | bool = True,
              blob_dir: Path | None = None):  # -> Agora (imported lazily to keep `agora --help` fast)
        """The public `Agora` object for these options; `account=None` connects without the --account (read-only
        views of another address), `True` (the default) uses it."""
        return open_agora(self.rpc, self.deployments, self.account if account is True else account,  # type: ignore[arg-type]
                          self.password_file, need_account=need_account, blob_dir=blob_dir)

    def market(self, *, need_account: bool = True, account: str | None | bool = True):  # -> Market
        """The `Market` binding of `agora(...)`."""
        return self.agora(need_account=need_account, account=account).market


#: The global options of the command line being run (also in its `ctx.obj`), for code that has no context.
_ACTIVE: ContextVar[GlobalOptions | None] = ContextVar("agora_global_options", default=None)


def global_options(ctx: typer.Context | None = None) -> GlobalOptions:
    """The global options of the running command: `ctx.obj` (defaults when called outside a command)."""
    found = ctx.find_object(GlobalOptions) if ctx is not None else None
    if found is None:
        found = _ACTIVE.get()
    return found if found is not None else GlobalOptions()


#: Global options that take a value, and global flags: accepted before or after the subcommand.
GLOBAL_VALUE_OPTIONS = frozenset({"--rpc", "--deployments", "--account", "-a", "--password-file"})
GLOBAL_FLAGS = frozenset({"--verbose", "-v"})


def hoist_global_options(args: list[str]) -> list[str]:
    """Move global options (with their values) that appear anywhere to the front, in order; stop at `--`.

    `job submit spec.yaml --rpc URL -a alice` becomes `--rpc URL -a alice job submit spec.yaml`, so the root
    command parses them whatever their position. Forms: `--rpc URL`, `--rpc=URL`, `-a NAME`, `-aNAME`.
    Raises ValueError for an option without its value."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_FLAGS:
            front.append(arg)
        elif arg in GLOBAL_VALUE_OPTIONS:
            if i + 1 >= len(args) or args[i + 1] == "--":
                raise ValueError(f"Option '{arg}' requires an argument.")
            front.extend(args[i:i + 2])
            i += 1
        elif (arg.startswith("--") and arg.split("=", 1)[0] in GLOBAL_VALUE_OPTIONS) or \
                (arg.startswith("-a") and not arg.startswith("--") and len(arg) > 2):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


GLOBAL_EPILOG = ("Global options (--rpc, --deployments, --account/-a, --password-file, --verbose/-v) go before or "
                 "after the command: see `agora --help`.")


class GlobalOptionsGroup(typer.core.TyperGroup):
    """The root group: global options are accepted after the subcommand too (see `hoist_global_options`); every
    subcommand's help points at them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        todo = list(self.commands.values())
        while todo:
            cmd = todo.pop()
            cmd.epilog = cmd.epilog or GLOBAL_EPILOG
            todo.extend(getattr(cmd, "commands", {}).values())

    # typer's base class types `ctx` with its private vendored click Context; the one it passes is a typer.Context.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        try:
            hoisted = hoist_global_options(list(args))
        except ValueError as err:
            ctx.fail(str(err))
        return super().parse_args(ctx, hoisted)


RpcOpt = Annotated[str | None, typer.Option("--rpc", envvar="AGORA_RPC", show_envvar=True,
                                            help="JSON-RPC URL (default http://127.0.0.1:8545)")]
DeploymentsOpt = Annotated[Path | None, typer.Option("--deployments", envvar="AGORA_DEPLOYMENTS", show_envvar=True,
                                                     help="Folder of <chainId>.json files (default ./deployments)")]
AccountOpt = Annotated[str | None, typer.Option("--account", "-a", envvar="AGORA_ACCOUNT", show_envvar=True,
                                                help="Keystore name or address")]
PasswordFileOpt = Annotated[Path | None, typer.Option(
    "--password-file", envvar="AGORA_PASSWORD_FILE", show_envvar=True,
    help="File whose first line is the keystore password (or env AGORA_PASSWORD, or a prompt)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr; tracebacks with errors")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout")]


def root_callback(ctx: typer.Context, rpc: RpcOpt = None, deployments: DeploymentsOpt = None,
                  account: AccountOpt = None, password_file: PasswordFileOpt = None,
                  verbose: VerboseOpt = False) -> None:
    """Store the global options in `ctx.obj` for the subcommand."""
    names = ("rpc", "deployments", "account", "password_file", "verbose")
    given = frozenset(n for n in names if getattr(ctx.get_parameter_source(n), "name", None) == "COMMANDLINE")
    ctx.obj = GlobalOptions(rpc=rpc or None, deployments=deployments, account=account or None,
                            password_file=password_file, verbose=verbose, given=given)
    _ACTIVE.set(ctx.obj)
    if verbose:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- errors, output
def handle_errors(fn: F) -> F:
    """Turn `AgoraError` into one red line on stderr and exit with its `exit_code`; never a traceback (unless
    --verbose). Every command is wrapped in it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AgoraError as err:
            if global_options().verbose:
                console.print_exception()
            console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    wrapper.handles_errors = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


_CAMEL = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+$")
_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")
#: Mappings whose keys are names or ids (tensor, output, metric and stage names, job and blob ids), not fields:
#: their keys are printed as they are (their values are still converted).
DATA_KEYED = frozenset({"tensors", "outputs", "metrics", "times", "timings", "gas", "compute_s", "jobs", "bad"})


def snake_case(key: str) -> str:
    """`gasUsed` -> `gas_used`; keys that are not camelCase identifiers are returned unchanged."""
    return _HUMP.sub(r"_\1", key).lower() if _CAMEL.match(key) else key


def snake_keys(obj: Any, *, keep_keys: bool = False) -> Any:
    """`obj` with every camelCase mapping key in snake_case, recursively (see `DATA_KEYED`)."""
    if isinstance(obj, Mapping):
        return {(k if keep_keys or not isinstance(k, str) else snake_case(k)):
                snake_keys(v, keep_keys=isinstance(k, str) and not keep_keys and snake_case(k) in DATA_KEYED)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [snake_keys(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Print `obj` as JSON on stdout (for `--json`); keys in snake_case (see `snake_keys`)."""
    sys.stdout.write(json.dumps(snake_keys(obj), indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """Show a spinner on stderr while waiting (receipts, chain start-up)."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield


# ---------------------------------------------------------------- connections
def open_agora(rpc: str | None, deployments: Path | None, account: str | None, password_file: Path | None,
               *, need_account: bool = True, blob_dir: Path | None = None):  # -> Agora
    """Connect, load the deployment and unlock the account (when needed: the one named, else AGORA_ACCOUNT, else
    the only keystore) into the public `Agora` object every command works through."""
    from marketplace.agora import Agora

    settings = load_settings()
    signer = None
    if need_account or account or settings.account:
        from marketplace.wallet import load_account

        signer = load_account(account=account, password_file=password_file, settings=settings)
    with spinner("connecting"):
        return Agora.connect(rpc, account=signer, deployments=deployments, blob_dir=blob_dir)


def open_market(rpc: str | None, deployments: Path | None, account: str | None, password_file: Path | None,
                *, need_account: bool = True):  # -> Market
    """The `Market` binding of `open_agora(...)`."""
    return open_agora(rpc, deployments, account, password_file, need_account=need_account).market


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
    except ValueError as err:  # not finite, or more decimals than the token has: nothing is rounded away
        raise ConfigError(str(err)) from None


def parse_b32(text: str, what: str) -> bytes:
    from marketplace.errors import ConfigError
    from marketplace.types import b32

    try:
        return b32(text)
    except ValueError:
        raise ConfigError(f"{what} must be 32 bytes of 0x-hex, got {text!r}") from None


def tx_line(action: str, result) -> None:
    console.print(f"[green]✓[/green] {action}  tx {result.tx_hash}  gas {result.gas_used:,}", highlight=False)
