"""`agora collab ...`: collaborative training, one model trained by several providers (docs/collaborative-training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli import app
from marketplace.cli._common import (
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
from marketplace.cli.job import (
    BootstrapOpt,
    ListenOpt,
    StoreOpt,
    _bootstrap,
    _print_explanation,
    _say,
)

collab_app = typer.Typer(help="Collaborative training: one model, several providers, paid per accepted round.",
                         no_args_is_help=True)
app.add_typer(collab_app, name="collab")


def _chain(market: Any) -> Any:
    from marketplace.collab.contract import CollabContract

    return CollabContract(market.client)


@collab_app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Collab spec (YAML or JSON), e.g. examples/collab/mlp-collab.yaml")],
    max_price: Annotated[str, typer.Option("--max-price", help="Most you pay one provider per accepted round, tokens")] = "1",
    bid_window: Annotated[float, typer.Option("--bid-window", help="Seconds to collect bids")] = 3.0,
    claim_window: Annotated[int, typer.Option("--claim-window", help="Seconds providers have to claim receipts, counted from the later of settlement and the job deadline")] = 600,
    bootstrap: BootstrapOpt = [],  # noqa: B006 - typer default
    listen: ListenOpt = "/ip4/127.0.0.1/tcp/0",
    out: Annotated[Path | None, typer.Option("--out", help="Report and final model folder [default ./collab-<spec hash prefix>]")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Announce a collaborative training job, pick m providers, run its rounds and settle every contribution in
    one transaction. Writes collab.json (per round: accepted, rejected and why, bytes, times) and model.safetensors."""
    from marketplace.collab.coordinator import run_collab_sync
    from marketplace.collab.spec import load_collab_spec
    from marketplace.requester import NoAcceptableBidsError
    from marketplace.types import from_wei

    cspec = load_collab_spec(spec)
    agora = global_options(ctx).agora(blob_dir=store)
    market, st, blobs, key = agora.market, agora.store, agora.blobs, agora.p2p_key
    out_dir = out or Path.cwd() / f"collab-{cspec.spec_hash().hex()[:8]}"
    try:
        report = run_collab_sync(market, cspec, store=st, blobs=blobs, key=key, out_dir=out_dir,
                                 bootstrap=_bootstrap(bootstrap), listen=listen,
                                 progress=None if json_out else _say, max_price=parse_amount(max_price),
                                 bid_window=bid_window, claim_window=claim_window)
    except NoAcceptableBidsError as err:
        if json_out:
            emit_json({"state": "no-bids", "error": str(err), "explanation": err.explanation.to_json()})
        else:
            _print_explanation(err.explanation.to_json())
        raise
    if json_out:
        emit_json(report)
        return
    for r in report["rounds"]:
        console.print(f"  round {r['round']:>3}  accepted {len(r['accepted'])}  rejected {len(r['rejected'])}  "
                      f"missing {len(r['missing'])}  {r['wall_s']:.2f} s  {r['bytes_in'] + r['bytes_out']:,} B"
                      + "".join(f"\n      rejected {x['provider']}: {x['reason']}" for x in r["rejected"]),
                      highlight=False)
    for p in report["participants"]:
        console.print(f"  [{p['index']}] {p['provider']}  {p['count']} accepted x {from_wei(int(p['price']))} = "
                      f"{from_wei(int(p['paid']))} AGORA" + (f"  missed {p['missed']}" if p["missed"] else "")
                      + (f"  rejected {p['rejected']}" if p["rejected"] else ""), highlight=False)
    console.print(f"job {report['jobId']}  model {report['model']}  ({report['modelFile']})\n"
                  f"paid {from_wei(int(report['paid']))} of {from_wei(int(report['escrow']))} AGORA escrowed; the "
                  f"rest is refunded by `agora collab close {report['jobId']}` after the claim window", highlight=False)


@collab_app.command("status")
@handle_errors
def status(ctx: typer.Context, job_id: str, json_out: JsonOpt = False) -> None:
    """A collab job as the contract sees it: phase, escrow, paid, model hash, contributions per provider."""
    from marketplace.types import from_wei

    view = _chain(global_options(ctx).market()).job(parse_b32(job_id, "job id"))
    d = {"job_id": "0x" + view.job_id.hex(), "phase": view.phase, "requester": view.requester,
         "spec_hash": "0x" + view.spec_hash.hex(), "rounds": view.rounds, "deadline": view.deadline,
         "claim_window": view.claim_window, "claim_end": view.claim_end, "escrow": str(view.escrow),
         "paid": str(view.paid), "model_hash": "0x" + view.model_hash.hex(),
         "participants": [{"index": i, "provider": p, "price": str(price), "count": n}
                          for i, (p, price, n) in enumerate(zip(view.providers, view.prices, view.counts,
                                                                strict=True))]}
    if json_out:
        emit_json(d)
        return
    console.print(f"collab job {job_id}  [bold]{view.phase}[/bold]  escrow {from_wei(view.escrow)}  paid "
                  f"{from_wei(view.paid)}  model 0x{bytes(view.model_hash).hex()}", highlight=False)
    for i, (p, price, n) in enumerate(zip(view.providers, view.prices, view.counts, strict=True)):
        console.print(f"  [{i}] {p}  {n} x {from_wei(price)}", highlight=False)


@collab_app.command("close")
@handle_errors
def close(ctx: typer.Context, job_id: str) -> None:
    """After the claim window: refund the unspent escrow to the requester (anyone may send it)."""
    chain = _chain(global_options(ctx).market())
    with spinner("waiting for receipt"):
        tx_line("close", chain.close(parse_b32(job_id, "job id")))


@collab_app.command("withdraw")
@handle_errors
def withdraw(ctx: typer.Context, amount: Annotated[str | None, typer.Argument(help="Tokens [default: the whole balance]")] = None) -> None:
    """Withdraw this account's collab balance (earnings, refunds) to its wallet."""
    chain = _chain(global_options(ctx).market())
    with spinner("waiting for receipt"):
        tx_line("withdraw", chain.withdraw(parse_amount(amount) if amount else None))


@collab_app.command("balance")
@handle_errors
def balance(ctx: typer.Context, address: Annotated[str | None, typer.Argument(help="Account [default: --account]")] = None,
            json_out: JsonOpt = False) -> None:
    """Withdrawable collab balance (earnings of a provider, refunds of a requester)."""
    from marketplace.types import from_wei

    market = global_options(ctx).market(need_account=address is None)
    who = address or market.address
    wei = _chain(market).balance(who)
    if json_out:
        emit_json({"address": who, "collab_balance_wei": str(wei), "collab_balance": from_wei(wei)})
    else:
        console.print(f"{who}  {from_wei(wei)} AGORA withdrawable from CollabMarket", highlight=False)
