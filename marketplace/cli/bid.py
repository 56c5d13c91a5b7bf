"""`agora bid sign|verify`: a provider's EIP-712 offer, written to a bid file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
)

bid_app = typer.Typer(help="Sign and check bids (EIP-712 offers for a job spec).", no_args_is_help=True)
app.add_typer(bid_app, name="bid")


def next_nonce(market, provider: str) -> int:
    """The lowest bid nonce not yet used or cancelled on-chain, above any this machine already signed."""
    from marketplace.config import load_settings

    path = load_settings().home / "nonces" / f"{market.client.chain_id}-{provider}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    nonce = json.loads(path.read_text())["next"] if path.exists() else 0
    while market.nonce_used(provider, nonce):
        nonce += 1
    path.write_text(json.dumps({"next": nonce + 1}))
    return nonce


def load_bids(paths: list[Path]):
    from marketplace.errors import SpecError
    from marketplace.types import SignedBid

    bids = []
    for p in paths:
        try:
            bids.append(SignedBid.from_json(json.loads(p.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SpecError(f"bid file {p}: {err}") from None
    return bids


@bid_app.command("sign")
@handle_errors
def sign(ctx: typer.Context, spec_hash: Annotated[str, typer.Option(help="keccak of the job spec (0x, 32 bytes)")],
         requester: Annotated[str, typer.Option(help="The requester this offer is for")],
         price: Annotated[str, typer.Option(help="Price in tokens")],
         collateral: Annotated[str, typer.Option(help="Collateral locked from your stake, tokens")] = "10",
         run_seconds: Annotated[int, typer.Option(help="Seconds you need from assignment to result")] = 60,
         min_window: Annotated[int, typer.Option(help="Shortest challenge/reveal window you accept, seconds")] = 60,
         max_lock: Annotated[int, typer.Option(help="Latest result deadline you accept, seconds from now "
                                                    "(bounds how long your collateral can be locked)")] = 86400,
         expires_in: Annotated[int, typer.Option(help="Offer valid for this many seconds")] = 3600,
         nonce: Annotated[int | None, typer.Option(help="Bid nonce (default: next unused)")] = None,
         out: Annotated[Path, typer.Option("--out", "-o", help="Bid file to write")] = Path("bid.json"),
         json_out: JsonOpt = False) -> None:
    """Sign an offer to run a job spec for a requester (bound to this chain and market)."""
    from web3 import Web3

    from marketplace.eip712 import sign_bid
    from marketplace.types import Bid

    market = global_options(ctx).market()
    provider = market.address
    bid = Bid(spec_hash=parse_b32(spec_hash, "spec hash"), requester=Web3.to_checksum_address(requester),
              provider=provider, price=parse_amount(price), collateral=parse_amount(collateral),
              run_seconds=run_seconds, expiry=market.client.timestamp() + expires_in, min_window=min_window,
              max_deadline=market.client.timestamp() + max_lock,
              nonce=nonce if nonce is not None else next_nonce(market, provider))
    signed = sign_bid(market.client.account, bid, chain_id=market.client.chain_id,
                      market=market.client.deployment.market)
    out.write_text(json.dumps(signed.to_json(), indent=2) + "\n")
    if json_out:
        emit_json({"file": str(out), **signed.to_json()})
    else:
        console.print(f"[green]✓[/green] signed bid nonce {bid.nonce} -> {out}", highlight=False)


@bid_app.command("verify")
@handle_errors
def verify(ctx: typer.Context, files: list[Path], json_out: JsonOpt = False) -> None:
    """Check bid files: signer, expiry, nonce still unused, provider's free stake."""
    from marketplace.eip712 import recover_bid_signer
    from marketplace.errors import SpecError

    market = global_options(ctx).market(need_account=False, account=None)
    now = market.client.timestamp()
    rows, bad = [], 0
    for path, sb in zip(files, load_bids(files)):
        signer = recover_bid_signer(sb, chain_id=market.client.chain_id, market=market.client.deployment.market)
        problems = []
        if signer != sb.bid.provider:
            problems.append(f"signed by {signer}, not {sb.bid.provider} (wrong chain or market?)")
        if sb.bid.expiry < now:
            problems.append(f"expired {now - sb.bid.expiry} s ago")
        if market.nonce_used(sb.bid.provider, sb.bid.nonce):
            problems.append(f"nonce {sb.bid.nonce} already used or cancelled")
        free = int(market.client.registry.functions.freeStake(sb.bid.provider).call())
        if free < sb.bid.collateral:
            problems.append(f"provider free stake {free} < collateral {sb.bid.collateral}")
        bad += bool(problems)
        rows.append({"file": str(path), "provider": sb.bid.provider, "ok": not problems, "problems": problems})
    if json_out:
        emit_json(rows)
    else:
        for r in rows:
            mark = "[green]ok[/green]" if r["ok"] else "[red]bad[/red] " + "; ".join(r["problems"])
            console.print(f"{r['file']}: {r['provider']} {mark}", highlight=False)
    if bad:
        raise SpecError(f"{bad} of {len(rows)} bid(s) are not usable")
