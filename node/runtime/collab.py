"""A participant's side of collaborative training (torch): one local round in the sandbox, and test accuracy.

    update = train_round(sandbox, spec, global_blob, shard, out_dir)   # update.blob_id goes on the job topic

A round is an ordinary `finetune` job (`marketplace.collab.spec.local_spec`) run in the node's `Sandbox`, so
it gets the same limits, isolation and determinism as any other job. Its outputs hold the trained weights plus
extras (`loss_curve`); the update is only the model's tensors (the global model's names), re-encoded with the
canonical writer, so every participant that verifies the round hashes exactly what the requester aggregated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from marketplace.collab.aggregate import decode, encode
from marketplace.collab.spec import CollabSpec, local_spec
from marketplace.results import OUTPUTS_FILE
from node.errors import RoundFailedError

if TYPE_CHECKING:
    from marketplace.canonical import ResultManifest
    from node.sandbox import Sandbox


@dataclass
class RoundUpdate:
    """One participant's update for one round: canonical safetensors bytes and their blob id, the sandbox's
    compute seconds, the round job's result manifest, and the decoded float32 weights."""

    blob_bytes: bytes
    blob_id: str
    compute_s: float
    manifest: ResultManifest
    weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def train_round(sandbox: Sandbox, spec: CollabSpec, global_blob: str, shard: Mapping[str, Any], out_dir: Path
                ) -> RoundUpdate:
    """Train the global model `global_blob` on `shard` for the spec's local epochs in `sandbox`
    (a `node.sandbox.Sandbox`; the global model and the shard's blobs must already be in `sandbox.store`).

    Returns the update (only the global model's tensor names, float32, canonical bytes) and stores it in
    `sandbox.store` so it can be served as a blob. Raises RoundFailedError when the run did not end "ok",
    SpecError when the outputs miss a tensor of the model."""
    job = local_spec(spec, global_blob, dict(shard))
    manifest = sandbox.run(job, Path(out_dir))
    if manifest.status != "ok":
        raise RoundFailedError(f"local round failed ({manifest.status}): {manifest.error}")
    names = decode(sandbox.store.get_bytes(global_blob), what="global model").keys()
    outputs = decode((Path(out_dir) / OUTPUTS_FILE).read_bytes(), what="round outputs")
    missing = sorted(set(names) - set(outputs))
    if missing:
        raise RoundFailedError(f"local round outputs miss model tensor(s) {missing[:5]}")
    weights = {k: np.ascontiguousarray(outputs[k], dtype=np.float32) for k in sorted(names)}
    data = encode(weights)
    blob_id = sandbox.store.put_bytes(data)
    compute_s = float(manifest.timing.get("compute_s", 0.0))
    return RoundUpdate(blob_bytes=data, blob_id=blob_id, compute_s=compute_s, manifest=manifest,
                       weights=weights)


def evaluate_accuracy(spec_model: Any, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                      labels: np.ndarray | Mapping[str, np.ndarray]) -> float:
    """Top-1 accuracy of the model `spec_model` (anything with `.arch` and `.params`, e.g. a ModelRef) with
    `weights` on `inputs` (the input blob's tensors, e.g. {"x": ...}) against `labels` (int class ids, or the
    label blob's {"y": ...}); computed in float64 in fixed chunks, ties to the lowest class. No sandbox: for
    tests and benchmarks. Raises SpecError for weights or inputs that do not fit the model."""
    import torch

    from node.runtime import compute
    from node.runtime.models import build_model

    y = np.asarray(labels["y"] if isinstance(labels, Mapping) else labels)
    model = build_model(spec_model.arch, dict(spec_model.params), weights=weights).to(torch.float64)
    x = compute.to_torch(dict(inputs), torch.float64, torch.device("cpu"))
    scores = compute.forward_chunked(model, x, len(y)).numpy()
    return float((compute.top_k(scores, 1)[:, 0] == y).mean())


__all__ = ["RoundFailedError", "RoundUpdate", "evaluate_accuracy", "train_round"]
