"""`agora pipeline ...`: validate, run (and resume) and inspect low-code pipelines of market jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli import app
from marketplace.cli._common import (
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    JsonOpt,
    console,
    emit_json,
    global_options,
    handle_errors,
)
from marketplace.cli.job import BootstrapOpt, ListenOpt, StoreOpt

pipeline_app = typer.Typer(help="Validate, run, resume and inspect pipelines (DAGs of jobs).", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

StateOpt = Annotated[Path | None, typer.Option("--state", help="State directory [default $AGORA_HOME/pipelines/<name>]")]


def _blob_store(store: Path | None) -> Any:
    from marketplace.blobs import BlobStore, default_store

    return BlobStore(store) if store else default_store()


def _refuse(problems: list[str], json_out: bool, file: Path) -> None:
    """Every problem on its own line, exit 2 (EXIT_USAGE, as a ConfigError would)."""
    if json_out:
        emit_json({"file": str(file), "valid": False, "problems": problems})
    for p in problems:
        console.print(f"[red]error:[/red] {p}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


@pipeline_app.command("validate")
@handle_errors
def validate_cmd(file: Annotated[Path, typer.Argument(help="Pipeline YAML or JSON")],
                 store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Check a pipeline without a chain or a network: cycles, references, blobs, shapes, budget."""
    from marketplace.pipeline import load_pipeline, stage_outputs, validate
    from marketplace.types import from_wei

    pipe = load_pipeline(file)
    problems = validate(pipe, _blob_store(store))
    if problems:
        _refuse(problems, json_out, file)
    order = pipe.order()
    stages: list[dict[str, Any]] = [{"name": n, "kind": pipe.stages[n].spec.kind, "after": pipe.stages[n].deps,  # type: ignore[union-attr]
               "outputs": stage_outputs(pipe.stages[n]), "replicas": pipe.stages[n].replicas,
               "max_price": from_wei(pipe.stages[n].max_price), "stage_hash": pipe.stages[n].stage_hash()}
              for n in order]
    worst = sum(s.reserve for s in pipe.stages.values())
    if json_out:
        emit_json({"file": str(file), "valid": True, "name": pipe.name, "budget": from_wei(pipe.budget),
                   "max_cost": from_wei(worst), "order": order, "stages": stages})
        return
    console.print(f"valid pipeline {pipe.name}: {len(order)} stage(s), at most {from_wei(worst)} of "
                  f"{from_wei(pipe.budget)} AGORA", highlight=False)
    for s in stages:
        after = f" after {', '.join(s['after'])}" if s["after"] else ""
        console.print(f"  {s['name']}: {s['kind']}{after} -> {', '.join(s['outputs'])}  (k={s['replicas']}, "
                      f"max price {s['max_price']})", highlight=False)


def _print_event(ev: Any) -> None:
    style = {"failed": "red", "skipped": "yellow", "done": "green"}.get(ev.event)
    msg = f"[{style}]{ev.message}[/{style}]" if style else ev.message
    console.print(f"[dim]·[/dim] {msg}", highlight=False, soft_wrap=True)


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from marketplace.types import from_wei

    t = Table(title=f"pipeline {report.name}", title_justify="left")
    for col in ("stage", "kind", "status", "job", "result hash", "outputs", "cost", "time"):
        t.add_column(col, overflow="fold")
    for s in report.stages:
        outs = "\n".join(f"{k} {v[:19]}…" for k, v in s.outputs.items())
        outs += "".join(f"\n{k} {v:.4g}" for k, v in s.metrics.items())
        t.add_row(s.name, s.kind, s.status if not s.error else f"{s.status}: {s.error}", (s.job_id or "-")[:12],
                  (s.result_hash or "-")[:14], outs or "-", from_wei(s.cost),
                  f"{s.seconds:.1f} s" if s.seconds is not None else "-")
    t.add_row("total", "", "ok" if report.ok else "unfinished", "", "", "",
              f"{from_wei(report.total_cost)} / {from_wei(report.budget)}",
              f"{report.wall_s:.1f} s" if report.wall_s else "-", style="bold")
    Console().print(t)


@pipeline_app.command("run")
@handle_errors
def run_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Pipeline YAML or JSON")],
    state: StateOpt = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the market once for the unfinished stages' max cost")] = False,
    bootstrap: BootstrapOpt = [],  # noqa: B006 - typer default
    listen: ListenOpt = "/ip4/127.0.0.1/tcp/0",
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate, then run every stage over the market (in parallel where the DAG allows), within the budget.

    Run it again after an interruption: finished stages are kept (not paid again), opened jobs are resumed."""
    from marketplace.cli.job import _bootstrap
    from marketplace.pipeline import PipelineInvalidError, load_pipeline, prepare, run_pipeline_sync

    blobs = _blob_store(store)
    try:
        pipe = prepare(load_pipeline(file), blobs)  # before the chain is even contacted
    except PipelineInvalidError as err:
        _refuse(err.problems, json_out, file)
        return
    agora = global_options(ctx).agora(blob_dir=store)
    report = run_pipeline_sync(pipe, market=agora.market, store=agora.store, blobs=blobs, key=agora.p2p_key,
                               state_dir=state,
                               bootstrap=_bootstrap(bootstrap), listen=listen, approve=approve,
                               progress=_print_event,
                               requester_progress=None if json_out else
                               (lambda m: console.print(f"[dim]  {m}[/dim]", highlight=False, soft_wrap=True)))
    if json_out:
        emit_json(report.to_json())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_JOB_FAILED)


@pipeline_app.command("status")
@handle_errors
def status_cmd(target: Annotated[Path, typer.Argument(help="Pipeline file or its state directory")],
               state: StateOpt = None, json_out: JsonOpt = False) -> None:
    """Where a run stands, from its state directory (no chain needed)."""
    from marketplace.config import load_settings
    from marketplace.pipeline import PipelineState, default_state_dir, load_pipeline, report_of

    if state is not None:
        directory = state
    elif target.is_dir():
        directory = target
    else:
        directory = default_state_dir(load_settings().home, load_pipeline(target).name)
    report = report_of(PipelineState.load(directory))
    if json_out:
        emit_json(report.to_json())
    else:
        _print_report(report)
