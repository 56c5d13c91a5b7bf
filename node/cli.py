"""`agora run` and `agora verify`: run a job locally in the sandbox, or recompute and compare a result.

Loaded by `marketplace.cli` through the "agora.commands" entry point. Nothing here imports torch at import
time (`agora --help` stays fast, requester machines without torch keep working); the commands check for
torch first and fail with one clear line when the provider extra is missing.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from marketplace.cli import app
from marketplace.cli._common import (
    JsonOpt,
    console,
    emit_json,
    global_options,
    handle_errors,
    snake_keys,
    spinner,
)
from marketplace.errors import AgoraError, ToolchainError
from node.errors import LocalRunFailedError

NEEDS_TORCH = "this command needs the provider extra: pip install 'tensoragora[node]'"

SpecArg = Annotated[Path, typer.Argument(help="Job spec (YAML or JSON)", exists=True, dir_okay=False)]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="Blob store directory [default: the default store]")]


def _require_torch() -> None:
    """Print the install hint and exit (ToolchainError's code) when torch is not importable."""
    if importlib.util.find_spec("torch") is None:
        console.print(f"[red]error:[/red] {escape(NEEDS_TORCH)}", highlight=False, soft_wrap=True)
        raise typer.Exit(ToolchainError.exit_code)


def _open_store(store: Path | None) -> Any:
    from marketplace.blobs import BlobStore, default_store

    # Absolute: the sandbox worker runs jobs from its own scratch directory.
    return BlobStore(store.resolve()) if store is not None else default_store()


def _manifest_json(result_dir: Path) -> dict[str, Any]:
    return dict(json.loads((result_dir / "manifest.json").read_text()))


def _failure(manifest: Any, result_dir: Path | None) -> LocalRunFailedError:
    """One line for a non-ok manifest: the status and the last line of its error."""
    lines = [ln for ln in (manifest.error or "").strip().splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else "no details"
    where = f" (details in {result_dir / 'manifest.json'})" if result_dir is not None else ""
    return LocalRunFailedError(manifest.status, escape(f"job ended with status {manifest.status}: {reason}{where}"))


def _run_sandboxed(spec: Any, store: Any, out_dir: Path) -> Any:
    from node.sandbox import Sandbox

    with spinner("running the job in the sandbox"), Sandbox(store) as sandbox:
        return sandbox.run(spec, out_dir)


@app.command("run")
@handle_errors
def run_cmd(spec_path: SpecArg, store: StoreOpt = None,
            out: Annotated[Path | None, typer.Option("--out", help="Result directory [default ./result-<spec hash>]")] = None,
            as_json: JsonOpt = False) -> None:
    """Run a job locally in the sandbox; write outputs.safetensors and manifest.json."""
    _require_torch()
    from marketplace.spec import load_spec

    spec = load_spec(spec_path)
    out_dir = out or Path(f"result-{spec.spec_hash().hex()[:12]}")
    manifest = _run_sandboxed(spec, _open_store(store), out_dir)
    if as_json:
        emit_json({"result_dir": str(out_dir), "manifest": _manifest_json(out_dir)})
    if manifest.status != "ok":
        raise _failure(manifest, out_dir)
    if not as_json:
        t = manifest.timing
        console.print(f"[green]ok[/green] result {manifest.result_hash}", highlight=False, soft_wrap=True)
        console.print(f"  device {manifest.device}  profile {manifest.profile}  threads {manifest.threads}  "
                      f"wall {t['wall_s']:.3f} s  compute {t['compute_s']:.3f} s  queue {t['queue_s']:.3f} s",
                      highlight=False, soft_wrap=True)
        console.print(f"  written to {out_dir}", highlight=False, soft_wrap=True)


def _digests(manifest: Any) -> dict[str, str]:
    """Each output tensor's canonical digest, as a manifest records it."""
    return {name: str(entry.get("digest")) for name, entry in manifest.outputs.items()}


@app.command("verify")
@handle_errors
def verify_cmd(spec_path: SpecArg,
               result_dir: Annotated[Path, typer.Argument(help="Result directory to check", exists=True, file_okay=False)],
               store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Re-hash RESULT_DIR against its manifest, recompute the job in the sandbox and compare tensor by tensor."""
    _require_torch()
    from marketplace.results import ResultManifest, verify_result_dir
    from marketplace.spec import load_spec

    spec = load_spec(spec_path)
    try:  # the files in RESULT_DIR must hash to what its manifest claims, tensor by tensor
        verify_result_dir(result_dir)
        claimed = ResultManifest.read(result_dir)
    except (AgoraError, ValueError, OSError) as err:
        raise LocalRunFailedError("mismatch", escape(f"{result_dir} does not match its own manifest: {err}")) from None
    if claimed.spec_hash != "0x" + spec.spec_hash().hex():
        raise LocalRunFailedError("mismatch", f"{result_dir} is the result of another spec ({claimed.spec_hash})")
    with tempfile.TemporaryDirectory(prefix="agora-verify-") as tmp:
        mine = _run_sandboxed(spec, _open_store(store), Path(tmp))
        if mine.status != "ok":
            raise _failure(mine, None)
    theirs, ours = _digests(claimed), _digests(mine)
    differ = sorted(n for n in set(theirs) | set(ours) if theirs.get(n) != ours.get(n))
    report = {"match": not differ and claimed.result_hash == mine.result_hash, "differing": differ,
              "claimed": claimed.result_hash, "recomputed": mine.result_hash, "profile": spec.determinism}
    if as_json:
        emit_json(report)
    if not report["match"]:
        names = ", ".join(differ) or "(same tensors, different root)"
        raise LocalRunFailedError("mismatch", f"MISMATCH: {len(differ)} of {len(ours)} tensors differ: {names}")
    if not as_json:
        console.print(f"[green]match[/green] {mine.result_hash} ({len(ours)} tensors, profile "
                      f"{spec.determinism})", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- agora node
node_app = typer.Typer(help="Run a provider node: bid on announced jobs, run them, get paid.",
                       no_args_is_help=True)
app.add_typer(node_app, name="node")


def _setup_logging(fmt: str) -> None:
    """Logs go to stderr (stdout carries the ready line): text, or one JSON object per line."""
    import logging
    import sys

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                     "msg": record.getMessage()}
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            return json.dumps(entry, default=str)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("libp2p", "multiaddr", "web3", "urllib3", "async_service", "marketplace.p2p"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _leaf_agora_error(err: BaseException) -> AgoraError | None:
    """The AgoraError inside a (nested) exception group of one leaf, so the user sees one line."""
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err if isinstance(err, AgoraError) else None


@node_app.command("run")
@handle_errors
def node_run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="node.yaml (see `agora node init`)")] = None,
    bootstrap: Annotated[list[str] | None, typer.Option("--bootstrap", help="Bootstrap multiaddr (repeatable) [env AGORA_BOOTSTRAP]")] = None,
    ops_port: Annotated[int | None, typer.Option("--ops-port", help="Ops HTTP port on 127.0.0.1 (0 random, -1 off)")] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json (stderr)")] = "text",
    as_json: JsonOpt = False,
) -> None:
    """Run the provider node until SIGINT / SIGTERM. Prints one JSON "ready" line on stdout when it bids.

    The account is --account (global option), else the config file's `account`, else AGORA_ACCOUNT."""
    _require_torch()
    import sys

    import trio

    from marketplace.client import ChainClient
    from marketplace.config import load_settings
    from marketplace.errors import ConfigError
    from marketplace.p2p.identity import identity_key_path
    from marketplace.wallet import load_account
    from node.agent.agent import Agent
    from node.agent.config import load_config

    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {log_format!r}")
    _setup_logging(log_format)
    g = global_options(ctx)
    # Only an --account on the command line overrides the config file (which beats AGORA_ACCOUNT).
    cfg = load_config(config, account=g.account if "account" in g.given else None, bootstrap=bootstrap or None,
                      ops_port=ops_port)
    settings = load_settings()
    signer = load_account(account=cfg.account, password_file=g.password_file, settings=settings)
    client = ChainClient.open(g.rpc or settings.rpc_url, g.deployments or settings.deployments_dir, account=signer)
    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else settings.home / "node" / signer.address
    key_path = identity_key_path(settings.keystore_dir, signer.address)  # docs/market-protocol.md, "Identities"
    agent = Agent(cfg, signer, client, data_dir=data_dir, key_path=key_path)

    def ready(info: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(snake_keys(info), sort_keys=True) + "\n")
        sys.stdout.flush()

    try:
        trio.run(agent.run, ready)
    except BaseExceptionGroup as group:
        leaf = _leaf_agora_error(group)
        if leaf is None:
            raise
        raise leaf from None
    if as_json:
        ready({"event": "stopped", "address": signer.address})


@node_app.command("init")
@handle_errors
def node_init(out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config")] = Path("node.yaml"),
              force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
              as_json: JsonOpt = False) -> None:
    """Write a commented default node.yaml."""
    from marketplace.errors import ConfigError
    from node.agent.config import DEFAULT_YAML

    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    out.write_text(DEFAULT_YAML)
    if as_json:
        emit_json({"path": str(out)})
    else:
        console.print(f"wrote {escape(str(out))}; edit prices and stake, then `agora node run --config {escape(str(out))}`",
                      highlight=False, soft_wrap=True)
