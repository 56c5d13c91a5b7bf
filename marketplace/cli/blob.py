"""`agora blob ...`: the content-addressed blob store (job inputs, labels, weights, data orders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, console, emit_json, handle_errors
from marketplace.errors import BlobIntegrityError, SpecError

blob_app = typer.Typer(help="Add, fetch, list and verify content-addressed tensor blobs.", no_args_is_help=True)
app.add_typer(blob_app, name="blob")

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Blob store directory [default $AGORA_HOME/blobs]")]


def open_store(store: Path | None) -> Any:
    """The store at `store`, or the default one."""
    from marketplace.blobs import BlobStore, default_store

    return BlobStore(store) if store is not None else default_store()


def _describe(tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in sorted(tensors.items())}


def _read(path: Path, store: Any) -> bytes:
    from marketplace.errors import BlobTooLargeError

    try:
        size = path.stat().st_size
        if size > store.max_blob_bytes:
            raise BlobTooLargeError(f"{path} is {size:,} bytes, over the {store.max_blob_bytes:,}-byte cap",
                                    size=size, limit=store.max_blob_bytes)
        return path.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror}") from None


@blob_app.command("add")
@handle_errors
def add_cmd(
    file: Annotated[Path, typer.Argument(help="A .safetensors file, or a CSV / .npy / .npz to convert")],
    from_csv: Annotated[bool, typer.Option("--from-csv", help="Convert a numeric CSV (header row) to {x: float32 [N, F]}")] = False,
    label_column: Annotated[str | None, typer.Option("--label-column", help="CSV column holding integer class labels: stored as a second blob {y: int64 [N]}")] = None,
    from_npy: Annotated[bool, typer.Option("--from-npy", help="Convert a .npy (stored as x) or .npz (its names)")] = False,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Tokenize this CSV text column with the MiniLM tokenizer to {input_ids, attention_mask}")] = None,
    max_len: Annotated[int, typer.Option("--max-len", help="Token sequence length for --text-column")] = 64,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a tensor file; print its blob id (conversions with labels print an inputs and a labels id)."""
    from marketplace import tensors as T

    if sum((from_csv, from_npy, text_column is not None)) > 1:
        raise SpecError("choose one of --from-csv, --from-npy, --text-column")
    if label_column and not (from_csv or text_column):
        raise SpecError("--label-column goes with --from-csv or --text-column")
    st = open_store(store)
    parts: dict[str, Any]
    if text_column is not None:
        inputs, labels = T.from_text_csv(file, text_column=text_column, label_column=label_column, max_len=max_len)
        parts = {"inputs": inputs, "labels": labels}
    elif from_csv:
        inputs, labels = T.from_csv(file, label_column=label_column)
        parts = {"inputs": inputs, "labels": labels}
    elif from_npy:
        parts = {"inputs": T.from_npy(file)}
    else:
        data = _read(file, st)
        tensors = T.load_tensors(data, what=str(file))
        entry = {"role": "blob", "id": st.put_bytes(data), "size": len(data), "tensors": _describe(tensors)}
        _report([entry], as_json)
        return
    entries = []
    for role, tensors in parts.items():
        if tensors is None:
            continue
        data = T.dump_tensors(tensors)
        entries.append({"role": role, "id": st.put_bytes(data), "size": len(data), "tensors": _describe(tensors)})
    _report(entries, as_json)


def _report(entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        shapes = ", ".join(f"{n} {t['dtype']}{t['shape']}" for n, t in e["tensors"].items())
        label = "" if e["role"] == "blob" else f"{e['role']:<7} "
        typer.echo(f"{label}{e['id']}")
        console.print(f"  {e['size']:,} bytes: {shapes}", highlight=False)


@blob_app.command("get")
@handle_errors
def get_cmd(blob_id: Annotated[str, typer.Argument(help="sha256:<hex>")],
            out: Annotated[Path, typer.Option("--out", "-o", help="File to write")],
            store: StoreOpt = None) -> None:
    """Write a blob to a file (re-hashed first: a corrupt blob is never written out)."""
    data = open_store(store).get_bytes(blob_id)
    try:
        out.write_bytes(data)
    except OSError as err:
        raise SpecError(f"cannot write {out}: {err.strerror}") from None
    console.print(f"wrote {len(data):,} bytes to {out}", highlight=False)


@blob_app.command("list")
@handle_errors
def list_cmd(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List stored blobs."""
    infos = open_store(store).ls()
    if as_json:
        emit_json([{"id": b.id, "size": b.size, "path": str(b.path)} for b in infos])
        return
    for b in infos:
        typer.echo(f"{b.id}  {b.size:>12,}")
    console.print(f"{len(infos)} blob(s), {sum(b.size for b in infos):,} bytes", highlight=False)


blob_app.command("ls", hidden=True, help="Old spelling of `agora blob list`.")(list_cmd)


@blob_app.command("verify")
@handle_errors
def verify_cmd(blob_ids: Annotated[list[str] | None, typer.Argument(help="Blob ids [default: every blob]")] = None,
               store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Re-hash blobs; exit non-zero if any is missing or corrupt."""
    from marketplace.errors import AgoraError

    st = open_store(store)
    ids = blob_ids or [b.id for b in st.ls()]
    report: dict[str, str] = {}
    for blob_id in ids:
        try:
            st.verify(blob_id)
            report[blob_id] = "ok"
        except AgoraError as err:
            report[blob_id] = str(err)
    bad = {k: v for k, v in report.items() if v != "ok"}
    if as_json:
        emit_json({"checked": len(report), "bad": bad})
    else:
        for blob_id, status in report.items():
            typer.echo(f"{blob_id}  {'ok' if status == 'ok' else 'BAD'}")
    if bad:
        raise BlobIntegrityError(f"{len(bad)} of {len(report)} blob(s) failed: " + "; ".join(bad.values()))
    if not as_json:
        console.print(f"{len(report)} blob(s) ok", highlight=False)
