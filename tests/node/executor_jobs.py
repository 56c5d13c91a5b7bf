"""A fixed matrix of tiny jobs (every arch x every applicable profile x inference / evaluate / train) for the
executor determinism tests, plus a runner: `python tests/node/executor_jobs.py --threads N` prints a JSON map
{job: {output name: sha256 of dtype, shape and bytes}} so separate processes (and kernel sets) can be compared
(with `--values`, also the float32 outputs of the inference jobs, to measure how far they drift).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from marketplace.spec import JobSpec, parse_spec

BLOB = "sha256:" + "ab" * 32
F64_PROFILES = ("exact-f64",)
F32_PROFILES = ("pinned-f32", "none")

# all-MiniLM-L6-v2 tokenizer output (max_len 16) for: "the cat sat on the mat", "stocks fell sharply today",
# "a dog barked", "the market rallied" -- fixed here so the tests need no tokenizer.
MINILM_IDS = np.array([
    [101, 1996, 4937, 2938, 2006, 1996, 13523, 102, 0, 0, 0, 0, 0, 0, 0, 0],
    [101, 15768, 3062, 9249, 2651, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [101, 1037, 3899, 17554, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [101, 1996, 3006, 24356, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.int64)
MINILM_MASK = (MINILM_IDS != 0).astype(np.int64)


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "little"))


def arch_cases() -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]]:
    """arch short name -> (model section, input tensors, int64 class labels)."""
    r = _rng("executor-jobs")
    return {
        "mlp": ({"arch": "mlp@1", "params": {"in_features": 6, "hidden": [16, 8], "out_features": 3,
                                             "activation": "gelu"}},
                {"x": r.standard_normal((24, 6)).astype(np.float32)}, r.integers(0, 3, 24)),
        "cnn": ({"arch": "cnn@1", "params": {"in_channels": 2, "image_size": 8, "channels": [4, 6],
                                             "num_classes": 3}},
                {"x": r.standard_normal((6, 2, 8, 8)).astype(np.float32)}, r.integers(0, 3, 6)),
        "transformer": ({"arch": "transformer@1", "params": {"vocab_size": 50, "d_model": 16, "nhead": 2,
                                                             "num_layers": 2, "dim_ff": 32, "max_len": 12,
                                                             "num_classes": 4}},
                        {"input_ids": r.integers(0, 50, (8, 10))}, r.integers(0, 4, 8)),
        "minilm": ({"arch": "minilm-classifier@1", "params": {"num_classes": 2, "max_len": 16}},
                   {"input_ids": MINILM_IDS, "attention_mask": MINILM_MASK}, np.array([0, 1, 0, 1])),
    }


_TRAINING = {
    "mlp": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 5, "epochs": 3},
    "cnn": {"optimizer": "adam", "lr": 0.01, "batch_size": 4, "epochs": 2},
    "transformer": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "batch_size": 3, "epochs": 2},
    "minilm": {"optimizer": "sgd", "lr": 0.5, "batch_size": 2, "epochs": 3},
}

Job = tuple[JobSpec, dict[str, dict[str, np.ndarray]], dict[str, Any]]


def jobs() -> dict[str, Job]:
    """name -> (spec, tensors, extra execute kwargs). Names: '<arch>/<kind>/<profile>[/variant]'."""
    out: dict[str, Job] = {}
    for arch, (model, x, y) in arch_cases().items():
        kind_train = "finetune" if arch == "minilm" else "train"
        for prof in (*F64_PROFILES, *F32_PROFILES, "label"):
            top_k = 2 if prof == "label" else 1
            out[f"{arch}/inference/{prof}"] = (parse_spec({"kind": "inference", "model": model, "determinism": prof,
                                                           "top_k": top_k, "data": {"inputs": BLOB}}),
                                               {"inputs": x}, {})
        for prof in (*F64_PROFILES, *F32_PROFILES):
            both = {"inputs": BLOB, "labels": BLOB}
            out[f"{arch}/evaluate/{prof}"] = (parse_spec({"kind": "evaluate", "model": model, "determinism": prof,
                                                          "data": both}), {"inputs": x, "labels": {"y": y}}, {})
            out[f"{arch}/{kind_train}/{prof}"] = (
                parse_spec({"kind": kind_train, "model": model, "determinism": prof, "data": both,
                            "training": _TRAINING[arch]}), {"inputs": x, "labels": {"y": y}}, {})
    # a custom data order, and a MiniLM finetune that trains the encoder too (one AdamW step, float64: Adam
    # turns gradient rounding noise into +-lr steps, so this catches any parameter whose exact gradient is 0)
    model, x, y = arch_cases()["mlp"]
    order = np.stack([_rng(f"order{e}").permutation(len(y)) for e in range(2)])
    out["mlp/train/exact-f64/order"] = (
        parse_spec({"kind": "train", "model": model, "data": {"inputs": BLOB, "labels": BLOB},
                    "training": {"lr": 0.05, "batch_size": 7, "epochs": 2, "order": BLOB, "steps": 5}}),
        {"inputs": x, "labels": {"y": y}}, {"order": order})
    model, x, y = arch_cases()["minilm"]
    model = {**model, "params": {**model["params"], "train_encoder": True}}
    out["minilm/finetune/exact-f64/encoder"] = (
        parse_spec({"kind": "finetune", "model": model, "data": {"inputs": BLOB, "labels": BLOB},
                    "training": {"optimizer": "adamw", "lr": 0.001, "batch_size": 2, "steps": 1}}),
        {"inputs": x, "labels": {"y": y}}, {})
    return out


def digest(a: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-order bytes."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def run(name: str, job: Job, threads: int) -> dict[str, np.ndarray]:
    from node.runtime.executor import execute

    spec, tensors, kw = job
    trains = spec.kind in ("train", "finetune")
    return execute(spec, tensors, threads=1 if trains else threads, **kw).outputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference / evaluate jobs")
    ap.add_argument("--profiles", default="", help="comma-separated profiles to run (default: all)")
    ap.add_argument("--f32-inference", action="store_true", help="also run float32 inference jobs")
    ap.add_argument("--values", action="store_true", help="also print the float32 outputs of inference jobs (`values`)")
    args = ap.parse_args()
    import torch

    wanted = set(filter(None, args.profiles.split(",")))

    def keep(spec: JobSpec) -> bool:
        f32_inf = args.f32_inference and spec.kind == "inference"
        return not wanted or spec.determinism in wanted or f32_inf

    outputs = {name: run(name, job, args.threads) for name, job in jobs().items() if keep(job[0])}
    result = {name: {k: digest(v) for k, v in outs.items()} for name, outs in outputs.items()}
    doc: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability(), "jobs": result}
    if args.values:  # inference outputs only (a training job's weights can be millions of numbers)
        doc["values"] = {name: {k: v.tolist() for k, v in outs.items() if v.dtype == np.float32}
                         for name, outs in outputs.items() if name.split("/")[1] == "inference"}
    json.dump(doc, sys.stdout)


if __name__ == "__main__":
    main()
