"""`agora contracts`: compile the Solidity sources into `marketplace/artifacts` (offline, reproducible)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, emit_json, handle_errors, spinner

contracts_app = typer.Typer(help="Build the Solidity contracts.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")

out = Console()
err_console = Console(stderr=True)

MAX_RUNTIME_SIZE = 24_576  # EIP-170
MAX_INITCODE_SIZE = 49_152  # EIP-3860 (Shanghai)


def _size(hex_code: str) -> int:
    return (len(hex_code) - 2) // 2 if hex_code.startswith("0x") else len(hex_code) // 2


def _rows(artifacts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "source": art["sourceName"], "bytecode_size": _size(art["bytecode"]),
             "deployed_size": _size(art["deployedBytecode"])}
            for name, art in sorted(artifacts.items())]


@contracts_app.command("build")
@handle_errors
def build_cmd(
    check: bool = typer.Option(False, "--check",
                               help="Compile to a temp dir and fail if the committed artifacts differ."),
    json_out: JsonOpt = False,
) -> None:
    """Compile contracts/**/*.sol with the pinned solc (no downloads) and write marketplace/artifacts."""
    from marketplace.build import build

    with spinner("compiling contracts"):
        result = build(check=check)
    rows = _rows(result.artifacts)
    if json_out:
        emit_json({"contracts": rows, "warnings": result.warnings, "compiler": result.compiler.version,
                   "native_solc": result.compiler.native, "artifact_hash": result.artifact_hash,
                   "out_dir": str(result.out_dir), "checked": check, "written": result.written})
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    table = Table(title=f"solc {result.compiler.version}"
                        f"{' (native)' if result.compiler.native else ' (solcjs)'}", title_justify="left")
    table.add_column("contract")
    table.add_column("source")
    table.add_column("initcode bytes", justify="right")
    table.add_column("runtime bytes", justify="right")
    for row in rows:
        init = f"{row['bytecode_size']:,}"
        runtime = f"{row['deployed_size']:,}"
        if row["bytecode_size"] > MAX_INITCODE_SIZE:
            init = f"[red]{init}[/red]"
        if row["deployed_size"] > MAX_RUNTIME_SIZE:
            runtime = f"[red]{runtime} > EIP-170[/red]"
        table.add_row(row["name"], row["source"], init, runtime)
    out.print(table)
    if check:
        out.print(f"[green]artifacts in {result.out_dir} match a fresh build[/green]")
    elif result.written:
        out.print(f"wrote {', '.join(result.written)} to {result.out_dir}")
    else:
        out.print(f"artifacts in {result.out_dir} are up to date")
    out.print(f"artifact hash {result.artifact_hash}")
