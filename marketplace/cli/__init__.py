"""The `agora` command line: one module per command group, registered here.

Conventions every command follows:
- Global options (`--rpc`, `--deployments`, `--account/-a`, `--password-file`, `--verbose/-v`) are declared once,
  on the root command, with `AGORA_*` environment variables; they may be written before or after the subcommand
  (`GlobalOptionsGroup` moves them to the front, never past `--`). Commands read them from `ctx.obj`
  (`GlobalOptions`, see `marketplace.cli._common`).
- `--json` is a per-command flag (`JsonOpt`) on commands that print data; JSON keys are snake_case.
- Every command is wrapped in `handle_errors`; exit codes: 0 ok, 1 user error, 2 usage, 3 chain or RPC
  unreachable, 4 the job failed.
- Listing is `list`; tokens move into and out of the market balance with `agora token deposit|withdraw`.
"""

from __future__ import annotations

import typer

from marketplace.cli._common import GlobalOptionsGroup, root_callback

HELP = """tensoragora: buy and sell AI compute, settled on an EVM chain.

Global options may be written before or after the command: `agora job submit spec.yaml --rpc URL -a alice` is
`agora --rpc URL -a alice job submit spec.yaml` (nothing after `--` is moved). Each has an environment variable
(AGORA_RPC, AGORA_DEPLOYMENTS, AGORA_ACCOUNT, AGORA_PASSWORD_FILE); the command line wins.

Exit codes: 0 ok, 1 error, 2 usage or configuration error, 3 chain or RPC unreachable, 4 the job failed."""

app = typer.Typer(
    name="agora",
    cls=GlobalOptionsGroup,
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(root_callback)


def _register() -> None:
    """Import command-group modules; each one adds its sub-app to `app`."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    # Plugins (e.g. the provider node's `agora run`): a module that adds commands to `app` when imported.
    # A plugin whose dependencies are missing (torch on a requester machine) is skipped silently.
    from importlib.metadata import entry_points

    for ep in entry_points(group="agora.commands"):
        try:
            ep.load()
        except ImportError:
            continue


def main() -> None:
    _register()
    app()
