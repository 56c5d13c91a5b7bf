"""The `agora` command line: one module per command group, registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="agora",
    help="tensoragora: buy and sell AI compute, settled on an EVM chain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
