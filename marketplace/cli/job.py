"""`agora job ...`: the requester's side of a job, by hand (open with signed bids, accept, dispute, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli import app
from marketplace.cli._common import (
    EXIT_JOB_FAILED,
    JsonOpt,
    console,
    emit_json,
    global_options,
    handle_errors,
    parse_amount,
    parse_b32,
    spinner,
    tx_line,
)

job_app = typer.Typer(help="Open, assign, accept, dispute, finalize, expire and cancel jobs.", no_args_is_help=True)
app.add_typer(job_app, name="job")

BidsOpt = Annotated[list[Path], typer.Option("--bid", "-b", help="Signed bid file (repeat for k > 1)")]


def view_json(view: Any) -> dict[str, Any]:
    """A JobView as plain JSON."""
    job = view.job

    def hx(b: bytes) -> str:
        return "0x" + bytes(b).hex()

    out: dict[str, Any] = {"job_id": hx(view.job_id), "status": view.status,
                           "committed_mask": view.committed_mask, "revealed_mask": view.revealed_mask}
    if job is not None:
        out.update({
            "requester": job.requester, "spec_hash": hx(job.spec_hash), "phase": job.phase.name.lower(),
            "deadline": job.deadline, "window": job.window, "replicas": job.replicas, "escrow": str(job.escrow),
            "result": hx(job.result), "challenge_end": job.challenge_end,
            "participants": [{"index": i, "provider": a.provider, "price": str(a.price),
                              "collateral": str(a.collateral), "committed": bool(view.committed_mask >> i & 1),
                              "revealed": hx(view.reveals[i]) if i in view.reveals else None}
                             for i, a in enumerate(job.participants)],
        })
    if view.settled and view.settlement:
        s = view.settlement
        out["settlement"] = {"outcome": view.outcome.name.lower(), "result": hx(s["result"]),
                             "paid_mask": s["paidMask"], "slashed_mask": s["slashedMask"],
                             "refund": str(s["refund"]), "compensation": str(s["compensation"])}
    return out


def _print_view(view: Any, now: int) -> None:
    from marketplace.types import from_wei

    d = view_json(view)
    console.print(f"job {d['job_id']}  [bold]{d['status']}[/bold]", highlight=False)
    if view.job is not None:
        j = view.job
        console.print(f"  requester {j.requester}  k={j.replicas}  escrow {from_wei(j.escrow)} AGORA\n"
                      f"  spec {d['spec_hash']}\n  deadline {j.deadline} ({j.deadline - now:+d} s)  window {j.window} s",
                      highlight=False)
        if j.challenge_end:
            console.print(f"  result {d['result']}  challenge ends {j.challenge_end} ({j.challenge_end - now:+d} s)",
                          highlight=False)
        for p in d["participants"]:
            console.print(f"  [{p['index']}] {p['provider']}  price {from_wei(int(p['price']))}  collateral "
                          f"{from_wei(int(p['collateral']))}  committed={p['committed']}  revealed={p['revealed']}",
                          highlight=False)
    if "settlement" in d:
        s = d["settlement"]
        console.print(f"  outcome {s['outcome']}  paid mask {s['paid_mask']:#b}  slashed mask {s['slashed_mask']:#b}  "
                      f"refund {from_wei(int(s['refund']))}  compensation {from_wei(int(s['compensation']))}",
                      highlight=False)


@job_app.command("open")
@handle_errors
def open_cmd(
    ctx: typer.Context,
    spec_hash: Annotated[str | None, typer.Option(help="keccak of the job spec (0x)")] = None,
    spec: Annotated[Path | None, typer.Option(help="Spec file; its keccak is the spec hash")] = None,
    bid: BidsOpt = [],  # noqa: B006 - typer default
    deadline_in: Annotated[int, typer.Option(help="Results due this many seconds from now")] = 600,
    window: Annotated[int, typer.Option(help="Challenge window (k=1) or reveal window (k>1), seconds")] = 60,
    replicas: Annotated[int, typer.Option(help="k, when opening without bids")] = 1,
    budget: Annotated[str | None, typer.Option(help="Escrow when opening without bids, tokens")] = None,
    salt: Annotated[str | None, typer.Option(help="32-byte salt (default: random); the job id derives from it")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the market for the escrow first")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Open a job; with --bid files, assign them and lock the escrow in the same transaction."""
    import os

    from eth_utils import keccak

    from marketplace.cli.bid import load_bids
    from marketplace.errors import ConfigError
    from marketplace.types import JobParams

    if (spec_hash is None) == (spec is None):
        raise ConfigError("give exactly one of --spec-hash or --spec")
    sh = parse_b32(spec_hash, "spec hash") if spec_hash else keccak(spec.read_bytes())  # type: ignore[union-attr]
    bids = load_bids(bid)
    if not bids and budget is None:
        raise ConfigError("opening without --bid needs --budget (the escrow to lock until you assign)")
    escrow = sum(b.bid.price for b in bids) if bids else parse_amount(budget)  # type: ignore[arg-type]
    market = global_options(ctx).market()
    params = JobParams(spec_hash=sh, salt=parse_b32(salt, "salt") if salt else os.urandom(32),
                       deadline=market.client.timestamp() + deadline_in, window=window,
                       replicas=len(bids) or replicas, budget=0 if bids else escrow)
    with spinner("waiting for receipts"):
        if approve:
            shortfall = max(0, escrow - market.market_balance(market.address))
            market.ensure_allowance(market.client.deployment.market, shortfall)
        job_id, result = market.open_job(params, bids)
    if json_out:
        emit_json({"job_id": "0x" + job_id.hex(), "tx": result.tx_hash, "gas_used": result.gas_used})
    else:
        tx_line("open", result)
        console.print(f"job id 0x{job_id.hex()}", highlight=False)


def _simple(name: str, doc: str, method: str) -> None:
    @handle_errors
    def command(ctx: typer.Context, job_id: str) -> None:
        market = global_options(ctx).market()
        with spinner("waiting for receipt"):
            tx_line(name, getattr(market, method)(parse_b32(job_id, "job id")))

    command.__doc__ = doc
    job_app.command(name)(command)


_simple("accept", "Accept a submitted k = 1 result and pay the provider now.", "accept")
_simple("cancel", "Cancel a job that has no providers yet; the budget returns to your market balance.", "cancel")


@job_app.command("assign")
@handle_errors
def assign(ctx: typer.Context, job_id: str, bid: BidsOpt) -> None:
    """Assign signed bids to a job opened without them; unspent budget is credited back."""
    from marketplace.cli.bid import load_bids

    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("assign", market.assign(parse_b32(job_id, "job id"), load_bids(bid)))


@job_app.command("dispute")
@handle_errors
def dispute(ctx: typer.Context, job_id: str, bid: BidsOpt,
            deadline_in: Annotated[int, typer.Option(help="Verifiers' commits due in this many seconds")] = 600,
            approve: Annotated[bool, typer.Option("--approve", help="Approve the market for the verifier fees")] = False) -> None:
    """Dispute a k = 1 result inside its challenge window: verifiers re-execute, the majority decides."""
    from marketplace.cli.bid import load_bids

    market = global_options(ctx).market()
    bids = load_bids(bid)
    with spinner("waiting for receipts"):
        if approve:
            market.ensure_allowance(market.client.deployment.market, sum(b.bid.price for b in bids))
        tx_line("dispute", market.dispute(parse_b32(job_id, "job id"), bids, market.client.timestamp() + deadline_in))


@job_app.command("finalize")
@handle_errors
def finalize(ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(help="One or more job ids (batched in one tx)")]) -> None:
    """Settle jobs whose deadlines have passed (anyone may call); several ids go in one transaction."""
    market = global_options(ctx).market()
    ids = [parse_b32(j, "job id") for j in job_ids]
    with spinner("waiting for receipt"):
        result = market.finalize(ids[0]) if len(ids) == 1 else market.finalize_batch(ids)
    tx_line(f"finalize {len(ids)} job(s)", result)


@job_app.command("expire")
@handle_errors
def expire(ctx: typer.Context, job_id: str) -> None:
    """Expire a job nobody delivered: slash the no-shows to the requester and refund the escrow."""
    from marketplace.errors import AgoraError
    from marketplace.types import JobPhase

    market = global_options(ctx).market()
    jid = parse_b32(job_id, "job id")
    view = market.job(jid)
    job = view.job
    if view.settled or job is None:
        raise AgoraError(f"job {job_id} is already {view.status}")
    if job.phase in (JobPhase.SUBMITTED,) or (job.phase == JobPhase.ASSIGNED and job.replicas > 1 and view.revealed_mask):
        raise AgoraError(f"job {job_id} has results ({view.status}): use `agora job finalize`")
    now = market.client.timestamp()
    if now <= job.deadline:
        raise AgoraError(f"job {job_id} is not expired: its deadline is in {job.deadline - now} s")
    with spinner("waiting for receipt"):
        tx_line("expire", market.finalize(jid))


@job_app.command("status")
@handle_errors
def status(ctx: typer.Context, job_id: str, json_out: JsonOpt = False) -> None:
    """Phase, deadlines, participants, commits and reveals, and the settlement of a job."""
    market = global_options(ctx).market(need_account=False, account=None)
    view = market.job(parse_b32(job_id, "job id"))
    row = _local_row(job_id)
    if json_out:
        emit_json({**view_json(view), "local": row.to_json() if row else None})
    else:
        _print_view(view, market.client.timestamp())
        if row is not None:
            console.print(f"  local: {row.state}  out {row.out_dir}  timings {row.timings}  gas {row.gas}"
                          + (f"  error {row.error}" if row.error else ""), highlight=False, soft_wrap=True)
            if row.explanation:
                _print_explanation(row.explanation)


@job_app.command("list")
@handle_errors
def list_jobs(ctx: typer.Context, requester: Annotated[str | None, typer.Option(help="Only jobs of this requester")] = None,
              local: Annotated[bool, typer.Option("--local", help="Jobs of this machine's requester database instead (no chain needed)")] = False,
              json_out: JsonOpt = False) -> None:
    """Jobs opened on this market (from its events), with their status; --local: this machine's requester jobs."""
    from web3 import Web3

    if local:
        _list_local(json_out)
        return

    market = global_options(ctx).market(need_account=False, account=None)
    opened = market.client.market.events.JobOpened
    filters = {"requester": Web3.to_checksum_address(requester)} if requester else None
    logs = opened.get_logs(from_block=market.client.deployment.block, argument_filters=filters)
    rows = [view_json(market.job(bytes(lg["args"]["jobId"]))) for lg in logs]
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        console.print(f"{r['job_id']}  {r['status']:<22} k={r.get('replicas')}  requester {r.get('requester')}",
                      highlight=False)
    if not rows:
        console.print("no jobs yet")


def _list_local(json_out: bool) -> None:
    from marketplace.config import load_settings
    from marketplace.requester.store import RequesterStore

    base = load_settings().home / "requester"
    rows = [r for db in sorted(base.glob("*/requester.db")) for r in RequesterStore(db).jobs()] if base.is_dir() else []
    if json_out:
        emit_json([r.to_json() for r in rows])
        return
    for r in rows:
        name = r.job_id or f"(announcement {r.ann_id[:18]}…)"
        console.print(f"{name}  {r.state:<9} k={r.k}  {r.error or ''}", highlight=False, soft_wrap=True)
    if not rows:
        console.print("no local requester jobs")


# ---------------------------------------------------------------------------------------------------- requester
BootstrapOpt = Annotated[list[str], typer.Option("--bootstrap", help="Bootstrap multiaddr (repeat) [env AGORA_BOOTSTRAP, comma separated]")]
ListenOpt = Annotated[str, typer.Option("--listen", help="libp2p listen multiaddr")]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="Blob store holding the spec's inputs [default $AGORA_HOME/blobs]")]


def _bootstrap(given: list[str]) -> list[str]:
    from marketplace.p2p.discovery import bootstrap_from_env

    return list(given) or bootstrap_from_env()


def _say(msg: str) -> None:
    console.print(f"[dim]·[/dim] {msg}", highlight=False, soft_wrap=True)


def _print_explanation(expl: dict[str, Any]) -> None:
    from marketplace.types import from_wei

    for b in sorted(expl.get("bids", []), key=lambda b: (b.get("rank") or 99, b["order"])):
        rep = f"{b['score_bps'] / 10000:.2f}" if b.get("score_bps") is not None else "?"
        eff = from_wei(int(b["effective_price"])) if b.get("effective_price") else "-"
        console.print(f"  #{b.get('rank') or '-'} {b['provider']}  price {from_wei(int(b['price'] or 0))}  "
                      f"reputation {rep}  effective {eff}  {b['reason']}", highlight=False, soft_wrap=True)
    console.print(f"  {expl.get('summary', '')}", highlight=False, soft_wrap=True)


@job_app.command("submit")
@handle_errors
def submit(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON)")],
    replicas: Annotated[int, typer.Option("--replicas", "-k", help="k providers (k >= 2: commit-reveal)")] = 1,
    max_price: Annotated[str, typer.Option("--max-price", help="Most you pay each provider, tokens")] = "1",
    min_collateral: Annotated[str, typer.Option("--min-collateral", help="Least collateral a bid must lock")] = "0",
    bid_window: Annotated[float, typer.Option("--bid-window", help="Seconds to collect bids")] = 2.0,
    grace: Annotated[float, typer.Option("--grace", help="Close early this long after k acceptable bids")] = 0.05,
    run_seconds: Annotated[int | None, typer.Option("--run-seconds", help="Opening -> result deadline [default: spec wall_seconds + 30, at least the market minimum]")] = None,
    window: Annotated[int | None, typer.Option("--window", help="Challenge / reveal window, seconds")] = None,
    bootstrap: BootstrapOpt = [],  # noqa: B006 - typer default
    listen: ListenOpt = "/ip4/127.0.0.1/tcp/0",
    approve: Annotated[bool, typer.Option("--approve", help="Approve the market for the escrow shortfall")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Stay until the job settles and outputs are verified (normal mode)")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Result folder [default ./result-<job id prefix>]")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Announce a job over libp2p, pick the best bids, open it on chain; with --wait, see it through to settlement.

    Without --wait the command returns once the job is open; run `agora job resume` to serve its inputs and
    collect its result (providers need the requester online)."""
    from marketplace.requester import NoAcceptableBidsError
    from marketplace.spec import load_spec

    job_spec = load_spec(spec)
    price, least = parse_amount(max_price), parse_amount(min_collateral)  # before anything is announced
    agora = global_options(ctx).agora(blob_dir=store)
    try:
        outcome = agora.submit(job_spec, k=replicas, max_price=price,
                               bootstrap=_bootstrap(bootstrap), listen=listen, progress=None if json_out else _say,
                               min_collateral=least, bid_window=bid_window, grace=grace,
                               run_seconds=run_seconds, window=window, approve=approve, wait=wait, out_dir=out)
    except NoAcceptableBidsError as err:
        if json_out:
            emit_json({"state": "no-bids", "error": str(err), "explanation": err.explanation.to_json()})
        else:
            _print_explanation(err.explanation.to_json())
        raise
    if json_out:
        emit_json(outcome.to_json())
    else:
        _print_explanation(outcome.explanation.to_json())
        console.print(f"job id {outcome.job_id}  state {outcome.state}  outputs {outcome.out_dir}", highlight=False)
        if not wait:
            console.print("the job needs this requester online: run `agora job resume` to finish it", highlight=False)
    if not outcome.ok:
        raise typer.Exit(EXIT_JOB_FAILED)


@job_app.command("resume")
@handle_errors
def resume(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="One job (id or announcement id); default: every unfinished job")] = None,
    withdraw: Annotated[bool, typer.Option("--withdraw", help="Withdraw refunds and compensation afterwards")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Give up waiting after this many seconds")] = None,
    bootstrap: BootstrapOpt = [],  # noqa: B006 - typer default
    listen: ListenOpt = "/ip4/127.0.0.1/tcp/0",
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Serve, collect, finalize and fetch the results of this requester's unsettled jobs (after a restart)."""

    agora = global_options(ctx).agora(blob_dir=store)
    result = agora.resume(job_id, bootstrap=_bootstrap(bootstrap), listen=listen, withdraw=withdraw,
                          timeout=timeout, progress=None if json_out else _say)
    if json_out:
        emit_json(result)
        return
    for jid, info in result["jobs"].items():
        console.print(f"{jid}  {info.get('outcome') or info.get('state')}", highlight=False)
    if withdraw:
        from marketplace.types import from_wei

        console.print(f"withdrew {from_wei(int(result['withdrawn']))} AGORA", highlight=False)


def _local_row(job_id: str) -> Any:
    """The local requester database's row for `job_id`, when this machine's AGORA_ACCOUNT/only keystore has one."""
    from marketplace.config import load_settings
    from marketplace.requester.store import RequesterStore

    base = load_settings().home / "requester"
    if not base.is_dir():
        return None
    for db in sorted(base.glob("*/requester.db")):
        row = RequesterStore(db).job(job_id)
        if row is not None:
            return row
    return None


@job_app.command("watch")
@handle_errors
def watch(ctx: typer.Context, job_id: str, interval: Annotated[float, typer.Option(help="Seconds between polls")] = 1.0,
          timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds")] = None,
          json_out: JsonOpt = False) -> None:
    """Follow a job until it settles: chain status plus the local requester state, live."""
    import time

    from marketplace.errors import AgoraError

    market = global_options(ctx).market(need_account=False, account=None)
    jid = parse_b32(job_id, "job id")
    start, last = time.monotonic(), None
    while True:
        view = market.job(jid)
        row = _local_row(job_id)
        line = f"{view.status}  local {row.state if row else '-'}  committed {view.committed_mask:#b}  " \
               f"revealed {view.revealed_mask:#b}"
        if line != last and not json_out:
            console.print(line, highlight=False)
            last = line
        if view.settled:
            break
        if timeout is not None and time.monotonic() - start > timeout:
            raise AgoraError(f"job {job_id} not settled after {timeout:g} s ({view.status})")
        time.sleep(interval)
    if json_out:
        emit_json({**view_json(view), "local": row.to_json() if row else None})
