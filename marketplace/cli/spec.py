"""`agora spec ...`: write a commented job-spec template, check a spec, print its hash."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from marketplace.cli import app
from marketplace.cli._common import JsonOpt, console, emit_json, handle_errors
from marketplace.errors import SpecError

spec_app = typer.Typer(help="Write, check and hash job specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

KINDS = ("inference", "train", "finetune", "evaluate")
PLACEHOLDER = "sha256:" + "0" * 64

#: Example hyperparameters per architecture: (YAML line, comment).
_PARAMS: dict[str, list[tuple[str, str]]] = {
    "mlp@1": [("in_features: 8", "width of each feature vector: inputs hold x float [N, in_features]"),
              ("hidden: [32]", "hidden layer widths (up to 8 layers, each 1..8192)"),
              ("out_features: 4", "classes (cross_entropy labels 0..out_features-1) or regression targets (mse)"),
              ("activation: relu", "relu | tanh | gelu")],
    "cnn@1": [("in_channels: 1", "inputs hold x float [N, in_channels, image_size, image_size]"),
              ("image_size: 16", "square images; halved by each conv block's 2x2 max-pool"),
              ("channels: [8, 16]", "one conv-relu-maxpool block per entry (1..4 blocks, 1..512 channels)"),
              ("kernel_size: 3", "3 | 5 (same padding)"),
              ("num_classes: 4", "labels are 0..num_classes-1")],
    "transformer@1": [("vocab_size: 100", "inputs hold input_ids int [N, L], token ids 0..vocab_size-1"),
                      ("d_model: 32", "embedding width (divisible by nhead)"),
                      ("nhead: 4", "attention heads"),
                      ("num_layers: 1", "encoder blocks (1..12)"),
                      ("dim_ff: 64", "feed-forward width"),
                      ("max_len: 16", "longest sequence L (learned positions)"),
                      ("num_classes: 2", "labels are 0..num_classes-1")],
    "minilm-classifier@1": [("num_classes: 2", "labels are 0..num_classes-1"),
                            ("max_len: 32", ("longest sequence: inputs hold input_ids and attention_mask int "
                                             "[N, L<=max_len] (agora blob add --text-column tokenizes text)")),
                            ("train_encoder: false", "train/finetune the whole encoder (slow) or only the head")],
}


def spec_template(kind: str, arch: str = "mlp@1") -> str:
    """A commented YAML spec for `kind` and `arch`; parses with `load_spec` as it is (placeholder blob ids).
    Raises SpecError for an unknown kind or architecture."""
    from marketplace.archs import get_arch
    from marketplace.spec import PROFILE_GUARANTEES

    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    a = get_arch(arch)
    inputs = ", ".join(f"{n} ({k} [N, ...])" for n, (k, _) in a.inputs.items())
    trains, labelled = kind in ("train", "finetune"), kind != "inference"
    L: list[str] = [
        f"# tensoragora job spec: {kind} with {arch} ({a.description}).",
        "# Every blob id below is a PLACEHOLDER of the right form (sha256:000...0): replace each with the id that",
        "# `agora blob add FILE` prints. Check with `agora spec check FILE`; `agora spec hash FILE` prints the",
        "# on-chain spec hash (keccak256 of the canonical JSON, every default written out). Unknown fields are errors.",
        "version: 1",
        f"kind: {kind}  # inference | train | finetune | evaluate",
        "model:",
        f"  arch: {arch}  # name@version from the registry; a version never changes meaning",
        "  params:  # hyperparameters, checked against the architecture's schema",
        *(f"    {line}  # {comment}" for line, comment in _PARAMS[arch]),
    ]
    needs_weights = kind != "train" and not a.pretrained
    if needs_weights:
        L.append(f"  weights: {PLACEHOLDER}  # safetensors blob of parameters (node.runtime.models names); "
                 + ("finetuning starts from them" if kind == "finetune" else "omit to use the portable seeded init"))
    elif kind == "train":
        L.append(f"  # weights: {PLACEHOLDER}  # optional starting parameters; omitted: portable seeded init")
    else:
        L.append(f"  # weights: {PLACEHOLDER}  # optional: head-only (or full) weights; omitted: packaged encoder")
    L += ["data:",
          f"  inputs: {PLACEHOLDER}  # safetensors blob holding {inputs}"]
    if labelled:
        L.append(f"  labels: {PLACEHOLDER}  # safetensors blob holding y: int64 [N] class ids (float [N, C] for mse)")
    if trains:
        L += ["training:",
              "  optimizer: sgd  # sgd | adam | adamw",
              "  lr: 0.05  # learning rate: finite, > 0, <= 1000",
              "  momentum: 0.9  # sgd only, 0 <= momentum < 1",
              "  weight_decay: 0.0",
              "  epochs: 2  # passes over the data (1..10000)",
              "  # steps: 10  # optional cap on optimizer steps",
              "  batch_size: 32",
              f"  order: {PLACEHOLDER}  # blob with `order` int64 [epochs, N]: sample indices per epoch (omit: "
              + "stored order)",
              "  loss: cross_entropy  # cross_entropy (int labels) | mse (float targets)"]
    L.append("# Determinism profile: what must match for replicas' result hashes to agree.")
    for name, text in PROFILE_GUARANTEES.items():
        if name != "label" or kind == "inference":
            L.append(f"#   {name}: {text}")
    L.append("determinism: exact-f64")
    if kind == "inference":
        L.append("top_k: 1  # class ids per sample under the label profile (1..100)")
    L += ["limits:",
          "  wall_seconds: 600  # the job is killed (status timeout) after this",
          "  memory_mb: 4096  # address-space cap for the job process; also caps each blob's size",
          "  output_mb: 256  # cap on outputs.safetensors",
          "device:",
          "  type: cpu  # cpu | cuda (GPU results do not match CPU bit for bit)",
          "  min_memory_mb: 0  # GPU memory the provider must have"]
    return "\n".join(L) + "\n"


def _load(path: Path):  # -> JobSpec
    from marketplace.spec import load_spec

    return load_spec(path)


@spec_app.command("new")
@handle_errors
def new_cmd(kind: Annotated[str, typer.Option("--kind", "-k", help="inference | train | finetune | evaluate")],
            arch: Annotated[str, typer.Option("--arch", help="Architecture name@version (see marketplace.archs)")] = "mlp@1",
            out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write [default: stdout]")] = None,
            force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False) -> None:
    """Write a commented YAML spec template (placeholder blob ids to fill in)."""
    text = spec_template(kind, arch)
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise SpecError(f"{out} exists (use --force to overwrite)")
    out.write_text(text)
    console.print(f"wrote {out}: fill in the blob ids, then `agora spec check {out}`", highlight=False)


@spec_app.command("check")
@handle_errors
def check_cmd(file: Annotated[Path, typer.Argument(help="YAML or JSON spec")],
              store: Annotated[Path | None, typer.Option("--store", help="Also check the blobs are in this store")] = None,
              as_json: JsonOpt = False) -> None:
    """Validate a spec; print its kind, architecture, blobs and spec hash."""
    spec = _load(file)
    missing: list[str] = []
    if store is not None:
        from marketplace.blobs import BlobStore

        st = BlobStore(store)
        missing = [b for b in spec.blobs() if not st.has(b)]
    report = {"file": str(file), "valid": not missing, "kind": spec.kind, "arch": spec.model.arch,
              "determinism": spec.determinism, "spec_hash": "0x" + spec.spec_hash().hex(), "blobs": spec.blobs(),
              "missing_blobs": missing}
    if as_json:
        emit_json(report)
    else:
        typer.echo(report["spec_hash"])
        console.print(f"valid {spec.kind} spec for {spec.model.arch} ({spec.determinism}), "
                      f"{len(spec.blobs())} blob(s)", highlight=False)
    if missing:
        raise SpecError(f"{file}: blob(s) not in {store}: {', '.join(missing)}")


@spec_app.command("hash")
@handle_errors
def hash_cmd(file: Annotated[Path, typer.Argument(help="YAML or JSON spec")]) -> None:
    """Print the spec hash (keccak256 of the canonical JSON) as 0x-hex."""
    typer.echo("0x" + _load(file).spec_hash().hex())
