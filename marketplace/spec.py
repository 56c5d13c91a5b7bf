"""Job specs: versioned, validated, with one canonical encoding whose keccak is the on-chain spec hash.

Shared by requester and provider; no torch here. A spec names a model architecture from the registry in
`marketplace.archs` (hyperparameters checked against its schema), content-addressed inputs (safetensors blobs
in a `marketplace.blobs.BlobStore`), training settings with an explicit data order, a determinism profile,
limits and device requirements. Unknown fields are errors, everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from eth_utils import keccak
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from marketplace.errors import SpecError
from marketplace.models import canonical_json

SPEC_VERSION = 1
Kind = Literal["inference", "train", "finetune", "evaluate"]
Profile = Literal["exact-f64", "pinned-f32", "label", "none"]
BlobId = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

#: Which profiles are expected to give identical canonical hashes, and where (see README, "Determinism").
PROFILE_GUARANTEES: dict[str, str] = {
    "exact-f64": "computes in float64, rounds outputs to float32: identical across CPUs (x86 kernel sets, thread "
                 "counts, processes); CPU vs GPU usually identical for inference, not guaranteed for training",
    "pinned-f32": "float32 with pinned kernels (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE, "
                  "ONEDNN_MAX_CPU_ISA=SSE41) and fixed threads: identical across x86 CPUs with MKL; not across "
                  "architectures, not CPU vs GPU",
    "label": "publishes argmax / top-k class ids (int64) only: identical wherever the float scores are not tied "
             "within rounding, including CPU vs GPU for well-separated classes",
    "none": "plain float32, no guarantee: single provider, trust plus challenge",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ModelRef(_Strict):
    """An architecture from the registry (`name@version`), its hyperparameters, and optional initial weights."""

    arch: str
    params: dict[str, Any] = Field(default_factory=dict)
    weights: BlobId | None = None

    @model_validator(mode="after")
    def _check_arch(self) -> ModelRef:
        from marketplace.archs import validate_params

        validate_params(self.arch, self.params)  # raises SpecError with the schema's complaint
        return self


class Training(_Strict):
    """How to train. The data order is explicit: `order` names a blob holding an int64 tensor `order` of shape
    [epochs, N] (sample indices per epoch); without it every epoch goes through the data in stored order."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    epochs: int = Field(default=1, ge=1, le=10_000)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(ge=1, le=1 << 20)
    order: BlobId | None = None
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"

    @field_validator("lr", "momentum", "weight_decay")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        if v > 1e3:
            raise ValueError("is absurdly large (> 1000)")
        return v


class Limits(_Strict):
    wall_seconds: float = Field(default=600, gt=0, le=7 * 24 * 3600)
    memory_mb: int = Field(default=4096, ge=256)
    output_mb: int = Field(default=256, ge=1)


class Device(_Strict):
    type: Literal["cpu", "cuda"] = "cpu"
    min_memory_mb: int = Field(default=0, ge=0)


class _Canonical(_Strict):
    """A spec with one canonical encoding whose keccak is the hash it carries on chain and in bids."""

    def canonical_json(self) -> bytes:
        """The one canonical encoding: RFC 8785 JSON (`marketplace.models.canonical_json`), every default written
        out."""
        return canonical_json(self.model_dump(mode="json"))

    def spec_hash(self) -> bytes:
        """keccak256 of the canonical encoding: the `specHash` that bids and jobs carry on chain."""
        return keccak(self.canonical_json())


class JobSpec(_Canonical):
    """One job. `data` maps input names to safetensors blobs: `inputs` always, `labels` for train / finetune /
    evaluate. Outputs: inference -> `logits` (or `labels` under the label profile); train / finetune -> the
    trained weights; evaluate -> `loss` and `accuracy`."""

    version: Literal[1] = 1  # SPEC_VERSION
    kind: Kind
    model: ModelRef
    data: dict[str, BlobId]
    training: Training | None = None
    determinism: Profile = "exact-f64"
    top_k: int = Field(default=1, ge=1, le=100)
    limits: Limits = Field(default_factory=Limits)
    device: Device = Field(default_factory=Device)

    @model_validator(mode="after")
    def _check_kind(self) -> JobSpec:
        if "inputs" not in self.data:
            raise ValueError("data must name an `inputs` blob")
        needs_labels = self.kind in ("train", "finetune", "evaluate")
        if needs_labels and "labels" not in self.data:
            raise ValueError(f"a {self.kind} job needs a `labels` blob in data")
        unknown = set(self.data) - {"inputs", "labels"}
        if unknown:
            raise ValueError(f"unknown data names {sorted(unknown)} (expected inputs, labels)")
        trains = self.kind in ("train", "finetune")
        if trains and self.training is None:
            raise ValueError(f"a {self.kind} job needs a `training` section")
        if not trains and self.training is not None:
            raise ValueError(f"a {self.kind} job takes no `training` section")
        if self.kind == "finetune" and self.model.weights is None and not self.model.arch.startswith("minilm"):
            raise ValueError("a finetune job starts from weights: set model.weights (or use a pretrained arch)")
        if self.determinism == "label" and self.kind != "inference":
            raise ValueError("the label profile applies to inference jobs only")
        return self

    def blobs(self) -> list[str]:
        """Every blob id this job needs."""
        ids = list(self.data.values())
        if self.model.weights:
            ids.append(self.model.weights)
        if self.training and self.training.order:
            ids.append(self.training.order)
        return ids


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a decoded spec. Raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())
        raise SpecError(f"{source}: invalid spec: {problems}") from None


def read_document(path: Path | str, *, what: str = "spec", error: type[Exception] = SpecError) -> Any:
    """A YAML (or, for a `.json` name, JSON) file decoded: specs, collab specs and pipelines all read this way.
    Raises `error` (SpecError by default) naming the file for an unreadable file or a syntax error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    is_json = path.suffix == ".json"
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise error(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {err}") from None


def load_spec(path: Path) -> JobSpec:
    """Read a YAML or JSON spec file. Raises SpecError."""
    return parse_spec(read_document(path), source=str(path))
