"""The body of one job, shared by the sandboxed child and the in-process baseline.

Read the input blobs (hash-verified, size-capped), parse them as safetensors, call the executor, write the
outputs, and turn whatever went wrong into one of the typed statuses of a result manifest. No torch at import
time: torch arrives with the executor (`node.runtime.executor`), which is imported by `resolve_executor`.
"""

from __future__ import annotations

import errno
import importlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketplace.errors import AgoraError, SpecError

if TYPE_CHECKING:
    import numpy as np

    from marketplace.blobs import BlobStore
    from marketplace.spec import JobSpec

MiB = 1 << 20
DEFAULT_EXECUTOR = "node.runtime.executor:execute"
STATUSES = ("ok", "timeout", "out-of-memory", "bad-input", "crash")
#: Messages by which torch / numpy / the C++ runtime say an allocation failed (RLIMIT_AS or a real shortage).
_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory", "bad_alloc",
                "failed to allocate", "memoryerror")
Executor = Callable[..., Any]


@dataclass
class JobOutcome:
    """What one run of a job produced: a status from `STATUSES` and, when ok, the result's description."""

    status: str
    error: str | None = None
    result_hash: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    torch_version: str | None = None
    compute_s: float | None = None
    threads: int | None = None
    #: What the executor said about the run beyond the manifest's fields (kernel set, profile warnings).
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_executor(target: str = DEFAULT_EXECUTOR) -> Executor:
    """Import `module:function`. Raises ImportError (e.g. torch missing) or AttributeError."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name or "execute")


def load_job_tensors(spec: JobSpec, store: BlobStore, *, max_bytes: int
                     ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray] | None, np.ndarray | None]:
    """Fetch and parse every blob the spec names: (inputs by data name, weights or None, order or None).

    Raises SpecError for a refused payload (pickle, zip, not safetensors, no `order` tensor) and the
    `marketplace.blobs` errors (not found, too large, hash mismatch), all of which mean "bad input"."""
    from marketplace.tensors import load_tensors

    def fetch(blob_id: str, what: str) -> dict[str, np.ndarray]:
        return load_tensors(store.get_bytes(blob_id, max_bytes=max_bytes), what=what)

    inputs = {name: fetch(blob_id, f"data.{name}") for name, blob_id in spec.data.items()}
    weights = fetch(spec.model.weights, "model.weights") if spec.model.weights else None
    order = None
    if spec.training is not None and spec.training.order:
        order_blob = fetch(spec.training.order, "training.order")
        if "order" not in order_blob:
            raise SpecError(f"training.order: the blob holds no `order` tensor (found {sorted(order_blob)})")
        order = order_blob["order"]
    return inputs, weights, order


def classify(exc: BaseException, *, output_mb: int | None = None) -> tuple[str, str]:
    """Map an exception raised while running a job to (status, one-line message)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and is_oom_text(str(exc))):
        return "out-of-memory", _one_line(text)
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        limit = f" ({output_mb} MiB)" if output_mb else ""
        return "bad-input", f"outputs exceed limits.output_mb{limit}"
    if isinstance(exc, AgoraError):  # SpecError, DivergedError, blob not found / too large / corrupt
        return "bad-input", _one_line(str(exc))
    return "crash", tail(traceback.format_exception(exc))


def is_oom_text(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _OOM_MARKERS)


def tail(lines: list[str] | str, *, max_chars: int = 1500) -> str:
    """The last `max_chars` characters of a traceback or log, for a manifest's `error`."""
    text = "".join(lines).strip() if isinstance(lines, list) else lines.strip()
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def _notes(result: Any) -> dict[str, Any]:
    notes = {k: getattr(result, k) for k in ("cpu_capability", "kernel_env", "warnings") if hasattr(result, k)}
    return dict(json.loads(json.dumps(notes, default=str)))


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_job(spec: JobSpec, store: BlobStore, out_dir: Path, execute: Executor,
            **exec_kwargs: Any) -> JobOutcome:
    """Run one job to completion in this process and write its outputs into `out_dir`. `exec_kwargs` go to
    the executor (threads, require_pinned).

    Never raises for a job's failure (that is the returned status); only BaseExceptions that are not
    Exceptions (KeyboardInterrupt, SystemExit) pass through."""
    from marketplace.canonical import canonical_hash, write_outputs

    try:
        inputs, weights, order = load_job_tensors(spec, store, max_bytes=spec.limits.memory_mb * MiB)
        t0 = time.perf_counter()
        result = execute(spec, inputs, weights=weights, order=order, **exec_kwargs)
        compute_s = float(getattr(result, "compute_s", None) or time.perf_counter() - t0)
        outputs = write_outputs(out_dir, result.outputs)
        return JobOutcome("ok", result_hash=canonical_hash(result.outputs).hex, outputs=outputs,
                          device=result.device, torch_version=result.torch_version, compute_s=compute_s,
                          threads=result.threads, notes=_notes(result))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a typed status
        status, message = classify(exc, output_mb=spec.limits.output_mb)
        return JobOutcome(status, error=message)
