"""A job's result directory: `outputs.safetensors` plus `manifest.json` (a `ResultManifest`).

The manifest records what ran (spec hash, profile, device, torch version, threads), how it ended (status and
error), how long it took, and per output tensor its dtype, shape, file and canonical digest; `result_hash` is the
canonical root (`marketplace.tensorhash`) that goes on-chain. Re-exported from `marketplace.tensorhash`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from marketplace.errors import ResultMismatchError, SpecError
from marketplace.fsutil import atomic_write_bytes, atomic_write_text
from marketplace.models import Model

MANIFEST_FILE = "manifest.json"
OUTPUTS_FILE = "outputs.safetensors"
MANIFEST_VERSION: Final = 1
Status = Literal["ok", "timeout", "out-of-memory", "bad-input", "crash"]
STATUSES: tuple[str, ...] = ("ok", "timeout", "out-of-memory", "bad-input", "crash")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ResultManifest(Model):
    """What one run of a job produced. `spec_hash` and `result_hash` are 0x-hex; `outputs` maps each tensor
    name to {"dtype", "shape", "file", "digest"}; `timing` holds "wall_s", "compute_s" and "queue_s".
    `manifest.json` is `to_json_text()`: pretty, sorted JSON."""

    json_error: ClassVar[type[Exception] | None] = SpecError
    json_what: ClassVar[str] = "result manifest"

    version: Literal[1] = MANIFEST_VERSION
    spec_hash: str
    status: Status
    error: str | None = None
    result_hash: str | None = None
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    profile: str = ""
    device: str = ""
    torch_version: str | None = None
    timing: dict[str, float] = Field(default_factory=lambda: {"wall_s": 0.0, "compute_s": 0.0, "queue_s": 0.0})
    threads: int | None = None
    created_at: str = Field(default_factory=_now)

    @model_validator(mode="after")
    def _ok_has_hash(self) -> Self:
        if self.status == "ok" and not self.result_hash:
            raise ValueError("status ok needs a result_hash")
        return self

    def write(self, directory: Path | str) -> Path:
        """Write `<directory>/manifest.json` atomically; return its path. Raises OSError."""
        return atomic_write_text(Path(directory) / MANIFEST_FILE, self.to_json_text())

    @classmethod
    def read(cls, directory: Path | str) -> ResultManifest:
        """Read `<directory>/manifest.json`. Raises SpecError (missing or malformed)."""
        path = Path(directory) / MANIFEST_FILE
        try:
            return cls.from_json(path.read_bytes())
        except OSError as err:
            raise SpecError(f"cannot read result manifest {path}: {err.strerror}") from None


def write_outputs(directory: Path | str, tensors: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Write `tensors` to `<directory>/outputs.safetensors` (deterministic bytes) and return the manifest's
    `outputs` entry: per name {"dtype", "shape", "file", "digest" (0x-hex tensor digest)}.
    Raises SpecError (unsupported dtype or name), OSError (EFBIG when over an RLIMIT_FSIZE)."""
    from marketplace.tensorhash import tensor_hash
    from marketplace.tensors import dump_tensors

    h = tensor_hash(tensors)
    atomic_write_bytes(Path(directory) / OUTPUTS_FILE, dump_tensors(tensors))
    return {name: {"dtype": d.dtype, "shape": list(d.shape), "file": OUTPUTS_FILE, "digest": "0x" + d.digest.hex()}
            for name, d in sorted(h.tensors.items())}


def verify_result_dir(directory: Path | str):  # -> TensorHash
    """Re-hash `<directory>/outputs.safetensors` and compare it with the manifest, tensor by tensor and at the
    root. Returns the TensorHash. Raises SpecError (manifest or outputs unreadable, refused or malformed),
    ResultMismatchError naming the first differing tensor (or the root)."""
    from marketplace.tensorhash import tensor_hash
    from marketplace.tensors import load_tensors

    directory = Path(directory)
    manifest = ResultManifest.read(directory)
    if manifest.status != "ok":
        raise ResultMismatchError(f"{directory}: the job ended with status {manifest.status}; no outputs to verify")
    path = directory / OUTPUTS_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror}") from None
    h = tensor_hash(load_tensors(data, what=str(path)))
    for name in sorted(set(h.tensors) | set(manifest.outputs)):
        claimed, actual = manifest.outputs.get(name), h.tensors.get(name)
        if claimed is None or actual is None:
            where = "the manifest" if claimed is None else OUTPUTS_FILE
            raise ResultMismatchError(f"{directory}: tensor {name!r} is missing from {where}", tensor=name)
        got = {"dtype": actual.dtype, "shape": list(actual.shape), "digest": "0x" + actual.digest.hex()}
        for key, value in got.items():
            if claimed.get(key) != value:
                raise ResultMismatchError(f"{directory}: tensor {name!r} {key} differs: manifest {claimed.get(key)}, "
                                          f"{OUTPUTS_FILE} {value}", tensor=name)
    if manifest.result_hash != h.hex:
        raise ResultMismatchError(f"{directory}: result hash differs: manifest {manifest.result_hash}, "
                                  f"recomputed {h.hex}")
    return h
