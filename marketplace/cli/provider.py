"""`agora provider ...`: registration, stake, and the provider's side of a job by hand."""

from __future__ import annotations

import json
import os
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
    spinner,
    tx_line,
)

provider_app = typer.Typer(help="Register, stake, unstake; submit, commit and reveal results.", no_args_is_help=True)
app.add_typer(provider_app, name="provider")

ApproveOpt = Annotated[bool, typer.Option("--approve", help="Approve the registry for the amount first")]


def _secrets_path(market, job_id: bytes) -> Path:
    from marketplace.config import load_settings

    folder = load_settings().home / "commits" / str(market.client.chain_id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / f"0x{job_id.hex()}-{market.address}.json"


@provider_app.command("register")
@handle_errors
def register(ctx: typer.Context, stake: Annotated[str, typer.Option(help="Stake in tokens (at least the registry minimum)")],
             peer_id: Annotated[str, typer.Option(help="libp2p peer id of your node (base58 or 0x-hex)")],
             metadata: Annotated[Path | None, typer.Option(help="Advert file (capabilities, prices); its keccak is stored")] = None,
             approve: ApproveOpt = False) -> None:
    """Register as a provider with a stake."""
    from eth_utils import keccak

    from marketplace.errors import ConfigError

    amount = parse_amount(stake)
    market = global_options(ctx).market()
    if peer_id.startswith("0x"):
        pid = bytes.fromhex(peer_id[2:])
    else:
        try:
            import base58

            pid = base58.b58decode(peer_id)
        except (ImportError, ValueError):
            raise ConfigError(f"peer id {peer_id!r} is neither 0x-hex nor base58") from None
    meta = keccak(metadata.read_bytes()) if metadata else b"\x00" * 32
    with spinner("waiting for receipts"):
        if approve:
            market.ensure_allowance(market.client.deployment.registry, amount)
        tx_line("register", market.register(amount, pid, meta))


@provider_app.command("stake")
@handle_errors
def stake(ctx: typer.Context, amount: str, approve: ApproveOpt = False) -> None:
    """Add stake."""
    value = parse_amount(amount)
    market = global_options(ctx).market()
    with spinner("waiting for receipts"):
        if approve:
            market.ensure_allowance(market.client.deployment.registry, value)
        tx_line("stake", market.add_stake(value))


@provider_app.command("unstake")
@handle_errors
def unstake(ctx: typer.Context, amount: str) -> None:
    """Start unbonding free stake; withdraw it after the unbonding delay."""
    value = parse_amount(amount)
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("unstake", market.request_unstake(value))


@provider_app.command("withdraw")
@handle_errors
def withdraw_stake(ctx: typer.Context) -> None:
    """Withdraw unbonded stake once its delay has passed (earnings: `agora token withdraw`)."""
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("withdraw stake", market.withdraw_stake())


@provider_app.command("info")
@handle_errors
def info(ctx: typer.Context, address: Annotated[str | None, typer.Argument()] = None, json_out: JsonOpt = False) -> None:
    """Stake, collateral, unbonding and reputation of a provider."""
    from marketplace.types import from_wei

    market = global_options(ctx).market(need_account=address is None, account=True if address is None else None)
    who = address or market.address
    data = market.provider_info(who)
    out = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in data.items()}
    out["address"] = market.client.w3.to_checksum_address(who)
    if json_out:
        emit_json({k: (str(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in out.items()})
        return
    console.print(
        f"{out['address']}  registered={data['registered']}\n  stake {from_wei(data['stake'])}  locked "
        f"{from_wei(data['locked'])}  unbonding {from_wei(data['unbonding'])} (ready at {data['unbondingReadyAt']})\n"
        f"  jobs done {data['jobsDone']}  failed {data['jobsFailed']}  slashed {data['timesSlashed']}  "
        f"score {data['scoreBps'] / 100:.2f}%", highlight=False)


@provider_app.command("submit")
@handle_errors
def submit(ctx: typer.Context, job_id: str, result: Annotated[str, typer.Argument(help="Result hash (0x, 32 bytes)")]) -> None:
    """Submit the result hash of a k = 1 job; opens the requester's challenge window."""
    market = global_options(ctx).market()
    with spinner("waiting for receipt"):
        tx_line("submit", market.submit_result(parse_b32(job_id, "job id"), parse_b32(result, "result hash")))


@provider_app.command("commit")
@handle_errors
def commit(ctx: typer.Context, job_id: str, result: Annotated[str, typer.Argument(help="Result hash (0x, 32 bytes)")]) -> None:
    """Commit to a result of a replicated (or disputed) job; the salt is kept under AGORA_HOME for reveal."""
    from marketplace.types import commitment_for

    market = global_options(ctx).market()
    jid, res = parse_b32(job_id, "job id"), parse_b32(result, "result hash")
    index = market.participant_index(jid)
    salt = os.urandom(32)
    path = _secrets_path(market, jid)
    path.write_text(json.dumps({"index": index, "result": "0x" + res.hex(), "salt": "0x" + salt.hex()}))
    path.chmod(0o600)
    with spinner("waiting for receipt"):
        tx_line(f"commit (participant {index})", market.commit(jid, index, commitment_for(jid, market.address, res, salt)))


@provider_app.command("reveal")
@handle_errors
def reveal(ctx: typer.Context, job_id: str) -> None:
    """Reveal the result committed with `agora provider commit`."""
    from marketplace.errors import ConfigError

    market = global_options(ctx).market()
    jid = parse_b32(job_id, "job id")
    path = _secrets_path(market, jid)
    if not path.exists():
        raise ConfigError(f"no commitment secret for this job at {path}: commit from this machine first")
    secret = json.loads(path.read_text())
    with spinner("waiting for receipt"):
        tx_line("reveal", market.reveal(jid, secret["index"], parse_b32(secret["result"], "result"),
                                        parse_b32(secret["salt"], "salt")))


@provider_app.command("cancel-bids")
@handle_errors
def cancel_bids(ctx: typer.Context, nonces: Annotated[list[int], typer.Argument(help="Bid nonces to cancel")]) -> None:
    """Cancel signed bids by nonce so they can never be assigned."""
    market = global_options(ctx).market()
    words: dict[int, int] = {}
    for n in nonces:
        words[n >> 8] = words.get(n >> 8, 0) | (1 << (n & 0xFF))
    with spinner("waiting for receipts"):
        for word, mask in sorted(words.items()):
            tx_line(f"cancel nonces in word {word}", market.cancel_nonces(word, mask))
