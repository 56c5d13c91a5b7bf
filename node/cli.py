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
from marketplace.cli._common import JsonOpt, console, emit_json, handle_errors, spinner
from marketplace.errors import AgoraError, ToolchainError

NEEDS_TORCH = "this command needs the provider extra: pip install 'tensoragora[node]'"
#: Exit codes of `agora run` / `agora verify` per job status (1 is a mismatch or any other error).
STATUS_EXIT = {"timeout": 3, "out-of-memory": 4, "bad-input": 5, "crash": 6}

SpecArg = Annotated[Path, typer.Argument(help="Job spec (YAML or JSON)", exists=True, dir_okay=False)]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="Blob store directory [default: the default store]")]


class JobFailedError(AgoraError, RuntimeError):
    """A job ended with a status other than ok; `exit_code` tells which (see STATUS_EXIT)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = STATUS_EXIT.get(status, 1)


def _require_torch() -> None:
    """Print the install hint and exit (ToolchainError's code) when torch is not importable."""
    if importlib.util.find_spec("torch") is None:
        console.print(f"[red]error:[/red] {escape(NEEDS_TORCH)}", highlight=False, soft_wrap=True)
        raise typer.Exit(ToolchainError.exit_code)


def _open_store(store: Path | None) -> Any:
    from marketplace.blobs import BlobStore, default_store

    return BlobStore(store) if store is not None else default_store()


def _manifest_json(result_dir: Path) -> dict[str, Any]:
    return dict(json.loads((result_dir / "manifest.json").read_text()))


def _failure(manifest: Any, result_dir: Path | None) -> JobFailedError:
    """One line for a non-ok manifest: the status and the last line of its error."""
    lines = [ln for ln in (manifest.error or "").strip().splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else "no details"
    where = f" (details in {result_dir / 'manifest.json'})" if result_dir is not None else ""
    return JobFailedError(manifest.status, escape(f"job ended with status {manifest.status}: {reason}{where}"))


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
    from marketplace.canonical import ResultManifest, verify_result_dir
    from marketplace.spec import load_spec

    spec = load_spec(spec_path)
    try:  # the files in RESULT_DIR must hash to what its manifest claims, tensor by tensor
        verify_result_dir(result_dir)
        claimed = ResultManifest.read(result_dir)
    except (AgoraError, ValueError, OSError) as err:
        raise JobFailedError("mismatch", escape(f"{result_dir} does not match its own manifest: {err}")) from None
    if claimed.spec_hash != "0x" + spec.spec_hash().hex():
        raise JobFailedError("mismatch", f"{result_dir} is the result of another spec ({claimed.spec_hash})")
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
        raise JobFailedError("mismatch", f"MISMATCH: {len(differ)} of {len(ours)} tensors differ: {names}")
    if not as_json:
        console.print(f"[green]match[/green] {mine.result_hash} ({len(ours)} tensors, profile "
                      f"{spec.determinism})", highlight=False, soft_wrap=True)
