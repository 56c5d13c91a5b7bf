"""`agora p2p ...`: the bootstrap node (gossip + rendezvous point), ping a peer, list registered peers.

`agora p2p bootstrap` prints exactly one JSON line on stdout once it listens, so scripts and tests can read
its address: {"event": "ready", "peer_id": ..., "addrs": [...]}. Its identity is kept in a key file (default
`$AGORA_HOME/bootstrap/p2p-identity.key`) so its address stays the same across restarts. SIGINT and SIGTERM
stop it cleanly (exit 0; with --json a final {"event": "stopped", ...} line with its counters).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, console, emit_json, handle_errors, snake_keys
from marketplace.errors import ConfigError

p2p_app = typer.Typer(help="The peer-to-peer layer: run a bootstrap node, ping peers.", no_args_is_help=True)
app.add_typer(p2p_app, name="p2p")

DEFAULT_BOOTSTRAP_LISTEN = "/ip4/127.0.0.1/tcp/4001"

KeyFileOpt = Annotated[Path | None, typer.Option(
    "--key-file",
    help="libp2p identity key (created if missing) [default $AGORA_HOME/bootstrap/p2p-identity.key]")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", help="Rendezvous namespace nodes register under")]


def _line(obj: dict[str, Any]) -> None:
    """One compact JSON line on stdout, flushed (the ready line scripts wait for)."""
    sys.stdout.write(json.dumps(snake_keys(obj), sort_keys=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _trio_run(fn: Any, *args: Any) -> Any:
    """`trio.run(fn, *args)`, quiet libp2p logs, and the first AgoraError out of libp2p's nurseries re-raised
    alone (so `handle_errors` prints one line, not an exception group)."""
    import logging

    import libp2p  # noqa: F401 - importing libp2p resets its logger: import first, then quiet it
    import trio

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        found = _first_agora_error(group)
        if found is None:
            raise
        raise found from None


def _first_agora_error(err: BaseException) -> Exception | None:
    from marketplace.errors import AgoraError

    if isinstance(err, AgoraError):
        return err
    if isinstance(err, BaseExceptionGroup):
        for sub in err.exceptions:
            found = _first_agora_error(sub)
            if found is not None:
                return found
    return None


def _key_path(key_file: Path | None) -> Path:
    from marketplace.config import load_settings

    return key_file if key_file is not None else load_settings().home / "bootstrap" / "p2p-identity.key"


def _listen_addr(listen: str) -> str:
    import multiaddr

    try:
        multiaddr.Multiaddr(listen)
    except Exception as err:  # noqa: BLE001 - multiaddr raises several types
        raise ConfigError(f"--listen is not a multiaddr: {listen!r} ({err})") from None
    return listen


@p2p_app.command("bootstrap")
@handle_errors
def bootstrap_cmd(
    listen: Annotated[str, typer.Option("--listen", help="Listen multiaddr")] = DEFAULT_BOOTSTRAP_LISTEN,
    key_file: KeyFileOpt = None,
    namespace: NamespaceOpt = "agora/1",
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="Another bootstrap node to stay connected to (repeatable)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a bootstrap node (gossip + rendezvous point) until SIGINT/SIGTERM."""

    from marketplace.p2p import load_or_create_key

    key = load_or_create_key(_key_path(key_file))
    stats = _trio_run(_run_bootstrap, key, _listen_addr(listen), namespace, list(peer or []), as_json)
    if as_json:
        _line({"event": "stopped", **stats})
    else:
        console.print(f"stopped ({stats['peers']} peers connected, {stats['dropped']} dropped by liveness)")


async def _run_bootstrap(key: Any, listen: str, namespace: str, peers: list[str],
                         as_json: bool) -> dict[str, Any]:
    import trio

    from marketplace.p2p import open_host

    # Catch the signals before announcing readiness: a SIGTERM right after the ready line must stop us cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_host(key=key, listen=listen, gossip=True) as node:
            async with trio.open_nursery() as nursery:
                maintainer = await nursery.start(_maintain, node, peers, namespace)
                _line({"event": "ready", "peer_id": str(node.peer_id), "addrs": node.addrs,
                       "namespace": namespace})
                if not as_json:
                    console.print(f"bootstrap node {node.peer_id} listening; nodes use --bootstrap {node.addr}",
                                  soft_wrap=True)
                async for _sig in signals:
                    break
                nursery.cancel_scope.cancel()
        regs = maintainer.service.registrations.get(namespace, {}) if maintainer.service else {}
        return {"peer_id": str(node.peer_id), "peers": len(node.connected_peers()), "registered": len(regs),
                "dropped": maintainer.liveness.stats.dropped}


async def _maintain(node: Any, peers: list[str], namespace: str, *, task_status: Any) -> None:
    from marketplace.p2p import maintain_peers

    await maintain_peers(node, peers, namespace=namespace, rendezvous_server=True, task_status=task_status)


@p2p_app.command("ping")
@handle_errors
def ping_cmd(
    addr: Annotated[str, typer.Argument(help="The peer's multiaddr, ending in /p2p/<peer id>")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, help="Pings to send")] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Ping a peer on /agora/ping/1 from a throw-away identity and print the round-trip time."""

    from marketplace.p2p import peer_info

    target = peer_info(addr)
    rtts = _trio_run(_ping, addr, count, timeout)
    result = {"peer_id": str(target.peer_id), "rtt_ms": [round(r * 1000, 3) for r in rtts],
              "min_ms": round(min(rtts) * 1000, 3), "max_ms": round(max(rtts) * 1000, 3)}
    if as_json:
        emit_json(result)
    else:
        for i, r in enumerate(result["rtt_ms"]):
            typer.echo(f"ping {i + 1} to {target.peer_id}: {r:.2f} ms")


async def _ping(addr: str, count: int, timeout: float) -> list[float]:
    import trio
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from marketplace.p2p import open_host

    async with open_host(key=create_new_key_pair()) as node:
        await node.connect(addr, timeout=timeout)
        rtts = []
        for i in range(count):
            if i:
                await trio.sleep(1.0)
            rtts.append(await node.ping(addr, timeout=timeout))
        return rtts


@p2p_app.command("peers")
@handle_errors
def peers_cmd(
    addr: Annotated[str, typer.Argument(help="A bootstrap node's multiaddr, ending in /p2p/<peer id>")],
    namespace: NamespaceOpt = "agora/1",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """List the peers registered at a bootstrap node's rendezvous point."""

    peers = _trio_run(_peers, addr, namespace, timeout)
    if as_json:
        emit_json({"namespace": namespace, "peers": peers})
    else:
        for p in peers:
            typer.echo(f"{p['peer_id']}  {' '.join(p['addrs'])}")
        console.print(f"{len(peers)} peers registered under {namespace}")


async def _peers(addr: str, namespace: str, timeout: float) -> list[dict[str, Any]]:
    import trio
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.discovery.rendezvous.client import RendezvousClient

    from marketplace.p2p import P2PError, open_host

    async with open_host(key=create_new_key_pair()) as node:
        point = await node.connect(addr, timeout=timeout)
        try:
            with trio.fail_after(timeout):
                found, _ = await RendezvousClient(node.host, point).discover(namespace, limit=1000)
        except trio.TooSlowError:
            raise P2PError(f"{point} did not answer the rendezvous query within {timeout} s") from None
        except Exception as err:  # noqa: BLE001 - rendezvous raises several types; one clear line
            raise P2PError(f"{point} is not a rendezvous point: {type(err).__name__}: {err}") from None
        return [{"peer_id": str(p.peer_id), "addrs": [str(a) for a in p.addrs]} for p in found]
