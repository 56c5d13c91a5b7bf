"""Collaborative-training specs: one training job split across m providers, federated averaging per round.

No torch here: the requester (coordinator) validates the spec, splits the training set into shards and
derives each round's ordinary `finetune` JobSpec (`local_spec`), which a provider runs in its sandbox. The
spec is strict like `marketplace.spec.JobSpec` (unknown fields refused, frozen) and has one canonical JSON
encoding whose keccak is the job's spec hash.

Why the pieces are what they are:
- `model.weights` is required: every participant must start round 1 from the same global model, and the
  aggregated model of each round is the next round's `weights`.
- pretrained architectures (MiniLM) are refused: a frozen encoder ships head-only weights, so averaging would
  silently mix two meanings of "the model", and a trainable encoder would move 22M parameters per provider per
  round.
- `training.order` must be absent: an order blob indexes the full set ([epochs, N]) while each provider
  trains on its own shard; shards are cut from a seeded permutation (`seed`), so their stored order is already
  shuffled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from marketplace.archs import get_arch
from marketplace.blobs import BlobStore
from marketplace.errors import SpecError
from marketplace.spec import (
    BlobId,
    Device,
    JobSpec,
    Limits,
    ModelRef,
    Profile,
    Training,
    _Canonical,
    _Strict,
    read_document,
)
from marketplace.tensors import dump_tensors, load_tensors

Rule = Literal["fedavg", "trimmed_mean", "median", "krum"]
#: Data names a collab spec carries (the full training set, held by the requester).
DATA_NAMES = ("inputs", "labels")


class CollabData(_Strict):
    """The full training set: `inputs` and `labels` safetensors blobs with the same number of samples."""

    inputs: BlobId
    labels: BlobId


class Aggregation(_Strict):
    """How accepted updates become the next global model. `trim`: for trimmed_mean the number of values
    dropped per side per coordinate; for krum `f`, the number of Byzantine participants tolerated."""

    rule: Rule = "fedavg"
    trim: int = Field(default=0, ge=0, le=31)


class Checks(_Strict):
    """What an update must satisfy to be accepted: L2 norm of (update - global) over all tensors at most
    `max_update_norm`, and arrival before the round deadline (`round_seconds` after the round message)."""

    max_update_norm: float = Field(gt=0)
    round_seconds: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)

    @field_validator("max_update_norm")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class CollabSpec(_Canonical):
    """One collaborative training job: `rounds` rounds, each training every participant's shard for
    `training.epochs` local epochs from the current global model, then aggregating with `aggregation`."""

    version: Literal[1] = 1
    kind: Literal["collab"] = "collab"
    model: ModelRef
    data: CollabData
    training: Training
    rounds: int = Field(ge=1, le=1000)
    participants: int = Field(ge=1, le=64)
    min_participants: int = Field(default=1, ge=1)
    aggregation: Aggregation = Field(default_factory=Aggregation)
    checks: Checks
    determinism: Profile = "exact-f64"
    limits: Limits = Field(default_factory=Limits)
    device: Device = Field(default_factory=Device)
    seed: int = Field(default=0, ge=0, lt=1 << 63)

    @model_validator(mode="after")
    def _check(self) -> CollabSpec:
        if self.model.weights is None:
            raise ValueError("model.weights: required: the initial global model every participant "
                             "starts from")
        if get_arch(self.model.arch).pretrained:
            raise ValueError(f"model.arch: {self.model.arch} is pretrained and cannot be trained "
                             f"collaboratively (a frozen encoder ships head-only weights; use mlp@1, "
                             f"cnn@1 or transformer@1)")
        if self.training.order is not None:
            raise ValueError("training.order: must be absent: each provider trains on its own shard, which "
                             "is already cut from a seeded permutation (`seed`)")
        if self.determinism == "label":
            raise ValueError("determinism: the label profile applies to inference jobs only")
        if self.min_participants > self.participants:
            raise ValueError(f"min_participants: {self.min_participants} is more than participants "
                             f"({self.participants})")
        rule, trim, m = self.aggregation.rule, self.aggregation.trim, self.participants
        if rule == "trimmed_mean" and m <= 2 * trim:
            raise ValueError(f"aggregation.trim: trimmed_mean with trim {trim} needs participants > "
                             f"{2 * trim}, got {m}")
        if rule == "krum" and m <= 2 * trim + 2:
            raise ValueError(f"aggregation.trim: krum tolerating f = {trim} needs participants > "
                             f"{2 * trim + 2}, got {m}")
        return self

    def blobs(self) -> list[str]:
        """Every blob the requester needs: the training set and the initial weights."""
        assert self.model.weights is not None  # validated
        return [self.data.inputs, self.data.labels, self.model.weights]


def parse_collab_spec(data: Any, *, source: str = "spec") -> CollabSpec:
    """Validate a decoded collab spec. Raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping, got {type(data).__name__}")
    try:
        return CollabSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_problem(e) for e in err.errors())
        raise SpecError(f"{source}: invalid collab spec: {problems}") from None


def _problem(e: Any) -> str:
    """One pydantic error as `field: message` (our own root-level messages already start with the field)."""
    loc = ".".join(str(p) for p in e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def load_collab_spec(path: Path) -> CollabSpec:
    """Read a YAML or JSON collab spec file. Raises SpecError."""
    return parse_collab_spec(read_document(path, what="collab spec"), source=str(path))


# ---------------------------------------------------------------------- shards
def _load_set(spec: CollabSpec, store: BlobStore) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """The training set's tensors and its sample count. Raises SpecError when the tensors disagree on it."""
    max_bytes = spec.limits.memory_mb << 20
    inputs = load_tensors(store.get_bytes(spec.data.inputs, max_bytes=max_bytes), what="data.inputs")
    labels = load_tensors(store.get_bytes(spec.data.labels, max_bytes=max_bytes), what="data.labels")
    counts = {f"{what}.{k}": (a.shape[0] if a.ndim else -1)
              for what, ts in (("inputs", inputs), ("labels", labels)) for k, a in ts.items()}
    if not counts or len(set(counts.values())) != 1 or -1 in counts.values():
        raise SpecError(f"data: the training set's tensors must share their first dimension, got {counts}")
    return inputs, labels, next(iter(counts.values()))


def make_shards(spec: CollabSpec, store: BlobStore, m: int) -> list[dict[str, Any]]:
    """Split the training set into `m` shards, store each as blobs, and return
    `[{"inputs": blob id, "labels": blob id, "n": samples}, ...]`.

    Samples are permuted with `numpy.random.default_rng(spec.seed).permutation(N)` and cut into m contiguous,
    near-equal parts (the first N % m get one more), each stored with the source blobs' tensor names through
    the canonical writer, so every machine makes the same shard blobs. Raises SpecError (m out of 1..N, data
    that does not load or whose tensors disagree) and the store's errors."""
    inputs, labels, n = _load_set(spec, store)
    if not 1 <= m <= n:
        raise SpecError(f"cannot cut {n} samples into {m} shards (need 1 <= m <= {n})")
    perm = np.random.default_rng(spec.seed).permutation(n)
    bounds = [i * (n // m) + min(i, n % m) for i in range(m + 1)]
    shards = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        idx = perm[lo:hi]
        shard: dict[str, Any] = {
            "inputs": store.put_bytes(dump_tensors({k: a[idx] for k, a in inputs.items()})),
            "labels": store.put_bytes(dump_tensors({k: a[idx] for k, a in labels.items()})),
            "n": int(hi - lo),
        }
        shards.append(shard)
    return shards


def local_spec(spec: CollabSpec, global_blob: str, shard: dict[str, Any]) -> JobSpec:
    """The ordinary `finetune` job one participant runs for one round: the global model `global_blob`, trained
    on its shard for `training.epochs` local epochs, under the collab spec's determinism, limits and device.
    Raises SpecError for a malformed blob id."""
    try:
        return JobSpec(
            kind="finetune",
            model=ModelRef(arch=spec.model.arch, params=dict(spec.model.params), weights=global_blob),
            data={"inputs": shard["inputs"], "labels": shard["labels"]},
            training=spec.training, determinism=spec.determinism, limits=spec.limits, device=spec.device,
        )
    except ValidationError as err:
        raise SpecError(f"round job: {'; '.join(_problem(e) for e in err.errors())}") from None
    except KeyError as err:
        raise SpecError(f"shard has no {err.args[0]!r} blob") from None


__all__ = ["DATA_NAMES", "Aggregation", "Checks", "CollabData", "CollabSpec", "Rule", "load_collab_spec",
           "local_spec", "make_shards", "parse_collab_spec"]
