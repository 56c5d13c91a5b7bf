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


def main() -> None:
    _register()
    app()
