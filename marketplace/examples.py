"""Build the example datasets, weights and data orders as blobs, and write example specs that name them.

    python scripts/make_examples.py [--store DIR] [--out examples/specs] [--collab-out examples/collab]

(a thin wrapper around `main` here). Tests, the demo and the benchmarks call `make_examples(store, out)`.

Everything comes from numpy `default_rng` streams with fixed seeds, using only `Generator.random`, `integers`
and `permutation` plus exact float64 arithmetic rounded once to float32, so the bytes (and so the blob ids in
the specs) are the same on every machine: running this twice gives byte-identical specs. The MiniLM sentences
are tokenized with the packaged tokenizer (`marketplace.tensors.tokenize`). Each job runs in seconds on a CPU.

The collaborative-training example (`examples/collab/`) has its own dataset: a 10-class mixture in 32
dimensions whose classes overlap (a single provider reaches about 90 % test accuracy, not 100 %), a
4,000-sample training set, a 1,000-sample held-out test set and initial mlp@1 weights. `collab_ids()` returns
their blob ids.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from marketplace.blobs import BlobStore, default_store
from marketplace.tensors import dump_tensors, tokenize

SEED = 20250101
#: The source checkout (the default output directories are its examples/specs and examples/collab).
ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    ("I loved this film, it was wonderful.", 1), ("What a fantastic, joyful day.", 1),
    ("The food was delicious and the staff friendly.", 1), ("A brilliant and moving story.", 1),
    ("This works perfectly, I am very happy.", 1), ("Great value, highly recommended.", 1),
    ("The concert was amazing from start to finish.", 1), ("Such a kind and helpful teacher.", 1),
    ("I hated every minute of it.", 0), ("The service was slow and rude.", 0),
    ("A boring, predictable and far too long movie.", 0), ("It broke after one day, terrible.", 0),
    ("The room was dirty and smelled bad.", 0), ("What a waste of money.", 0),
    ("The worst meal I have ever eaten.", 0), ("Disappointing and badly written.", 0),
]

ARCH_PARAMS: dict[str, dict[str, Any]] = {
    "mlp@1": {"in_features": 8, "hidden": [32], "out_features": 4, "activation": "relu"},
    "cnn@1": {"in_channels": 1, "image_size": 16, "channels": [8, 16], "kernel_size": 3, "num_classes": 4},
    "transformer@1": {"vocab_size": 100, "d_model": 32, "nhead": 4, "num_layers": 1, "dim_ff": 64, "max_len": 16,
                      "num_classes": 2},
    "minilm-classifier@1": {"num_classes": 2, "max_len": 32, "train_encoder": False},
}
TRAINING: dict[str, dict[str, Any]] = {
    "mlp@1": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "epochs": 3, "batch_size": 32},
    "cnn@1": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 2, "batch_size": 32},
    "transformer@1": {"optimizer": "adam", "lr": 0.003, "epochs": 2, "batch_size": 32},
    "minilm-classifier@1": {"optimizer": "adam", "lr": 0.01, "epochs": 3, "batch_size": 8},
}
#: The collaborative-training example: a 10-class mixture in 32 dimensions, an mlp@1 with one hidden layer.
COLLAB_PARAMS: dict[str, Any] = {"in_features": 32, "hidden": [64], "out_features": 10, "activation": "relu"}
COLLAB_TRAIN_N, COLLAB_TEST_N, COLLAB_NOISE = 4000, 1000, 1.8
SHORT = {"mlp@1": "mlp", "cnn@1": "cnn", "transformer@1": "transformer", "minilm-classifier@1": "minilm"}


def rng(k: int) -> np.random.Generator:
    """Stream `k`: its own seed sequence, so adding a dataset never shifts another."""
    return np.random.default_rng([SEED, k])


def features(n: int, f: int, classes: int, k: int) -> tuple[dict, dict]:
    """Gaussian-free blobs: class centres in [-2, 2)^f plus uniform noise in [-1, 1)."""
    g = rng(k)
    centres = g.random((classes, f)) * 4 - 2
    y = g.integers(0, classes, n)
    x = centres[y] + (g.random((n, f)) * 2 - 1)
    return {"x": x.astype(np.float32)}, {"y": y.astype(np.int64)}


def mixture(n: int, k: int) -> tuple[dict, dict]:
    """The collab dataset: 10 class centres in [-1, 1)^32 (stream 30, shared by the train and test sets) plus
    near-gaussian noise (a sum of 4 uniforms, centred, times `COLLAB_NOISE`), so the classes overlap."""
    centres = rng(30).random((10, 32)) * 2 - 1
    g = rng(k)
    y = g.integers(0, 10, n)
    u = g.random((n, 32, 4))
    noise = u[..., 0] + u[..., 1] + u[..., 2] + u[..., 3] - 2.0  # explicit order: the same bits everywhere
    x = centres[y] + noise * COLLAB_NOISE
    return {"x": x.astype(np.float32)}, {"y": y.astype(np.int64)}


def images(n: int, side: int, k: int) -> tuple[dict, dict]:
    """4 classes: a brighter quadrant (class = 2 * row half + column half) over uniform noise."""
    g = rng(k)
    y = g.integers(0, 4, n)
    x = g.random((n, 1, side, side)) * 0.5
    h = side // 2
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, r * h:(r + 1) * h, col * h:(col + 1) * h] += 1.0
    return {"x": x.astype(np.float32)}, {"y": y.astype(np.int64)}


def tokens(n: int, length: int, k: int) -> tuple[dict, dict]:
    """Vocab 100, 2 classes: class 0 draws ids 1..60, class 1 ids 40..99 (overlapping)."""
    g = rng(k)
    y = g.integers(0, 2, n)
    ids = g.integers(0, 60, (n, length)) + 1 + 39 * y[:, None]
    return {"input_ids": ids.astype(np.int64)}, {"y": y.astype(np.int64)}


def sentences(max_len: int) -> tuple[dict, dict]:
    return (tokenize([s for s, _ in SENTENCES], max_len=max_len),
            {"y": np.asarray([lab for _, lab in SENTENCES], dtype=np.int64)})


def order(epochs: int, n: int, k: int) -> dict:
    g = rng(k)
    return {"order": np.stack([g.permutation(n) for _ in range(epochs)]).astype(np.int64)}


def _param_shapes(arch: str, p: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of `node.runtime.models` for `arch` (the torch state_dict names)."""
    s: dict[str, tuple[int, ...]] = {}
    if arch == "mlp@1":
        widths = [p["in_features"], *p["hidden"], p["out_features"]]
        for i, (a, b) in enumerate(pairwise(widths)):
            s[f"layers.{i}.weight"], s[f"layers.{i}.bias"] = (b, a), (b,)
    elif arch == "cnn@1":
        chans, kk = [p["in_channels"], *p["channels"]], p["kernel_size"]
        for i, (a, b) in enumerate(pairwise(chans)):
            s[f"blocks.{i}.weight"], s[f"blocks.{i}.bias"] = (b, a, kk, kk), (b,)
        side = p["image_size"] >> len(p["channels"])
        s["head.weight"], s["head.bias"] = (p["num_classes"], chans[-1] * side * side), (p["num_classes"],)
    elif arch == "transformer@1":
        d, ff = p["d_model"], p["dim_ff"]
        s["tok.weight"], s["pos.weight"] = (p["vocab_size"], d), (p["max_len"], d)
        for i in range(p["num_layers"]):
            b = f"blocks.{i}."
            for ln in ("ln1", "ln2"):
                s[b + ln + ".weight"], s[b + ln + ".bias"] = (d,), (d,)
            for lin, (o, a) in {"q": (d, d), "k": (d, d), "v": (d, d), "proj": (d, d), "ff1": (ff, d),
                                "ff2": (d, ff)}.items():
                s[b + lin + ".weight"] = (o, a)
                if lin != "k":  # no key bias (node.runtime.models: softmax ignores it)
                    s[b + lin + ".bias"] = (o,)
        s["norm.weight"], s["norm.bias"] = (d,), (d,)
        s["head.weight"], s["head.bias"] = (p["num_classes"], d), (p["num_classes"],)
    return s


def weights(arch: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """"Pretrained" example weights: each tensor from its own stream seeded by its name; LayerNorm 1 / 0,
    embeddings uniform(+-sqrt 3), other weights uniform(+-1/sqrt(fan_in)), biases uniform(+-0.1)."""
    out = {}
    for name, shape in _param_shapes(arch, params).items():
        seed = int.from_bytes(hashlib.sha256(f"example:{arch}:{name}".encode()).digest()[:8], "little")
        u = np.random.default_rng(seed).random(shape) * 2 - 1
        if ".ln" in name or name.startswith("norm."):
            v = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name in ("tok.weight", "pos.weight"):
            v = u * math.sqrt(3)
        elif name.endswith("bias"):
            v = u * 0.1
        else:
            v = u / math.sqrt(math.prod(shape[1:]))
        out[name] = v.astype(np.float32)
    return out


def build(store: BlobStore) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, str]]:
    """Store every blob; return (blob ids by name, spec dicts by file name, one-line descriptions)."""
    ids: dict[str, str] = {}

    def put(name: str, tensors: dict) -> str:
        ids[name] = store.put_bytes(dump_tensors(tensors))
        return ids[name]

    data = {"mlp@1": features(512, 8, 4, 1), "cnn@1": images(256, 16, 2), "transformer@1": tokens(256, 16, 3),
            "minilm-classifier@1": sentences(ARCH_PARAMS["minilm-classifier@1"]["max_len"])}
    specs: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for i, (arch, (x, y)) in enumerate(data.items()):
        short, n = SHORT[arch], len(y["y"])
        inputs, labels = put(f"{short}-inputs", x), put(f"{short}-labels", y)
        w = None if arch.startswith("minilm") else put(f"{short}-weights", weights(arch, ARCH_PARAMS[arch]))
        epochs = TRAINING[arch]["epochs"]
        ord_id = put(f"{short}-order", order(epochs, n, 10 + i))
        for kind in ("inference", "train", "finetune", "evaluate"):
            params = dict(ARCH_PARAMS[arch])
            model: dict[str, Any] = {"arch": arch, "params": params}
            if w and kind != "train":
                model["weights"] = w
            spec: dict[str, Any] = {"version": 1, "kind": kind, "model": model, "data": {"inputs": inputs}}
            if kind != "inference":
                spec["data"]["labels"] = labels
            if kind in ("train", "finetune"):
                spec["training"] = {**TRAINING[arch], "order": ord_id}
            if arch.startswith("minilm") and kind == "finetune":  # the whole encoder, briefly
                params["train_encoder"] = True
                spec["training"] = {"optimizer": "adamw", "lr": 2e-5, "epochs": 1, "batch_size": 8}
            spec["determinism"] = "exact-f64"
            specs[f"{short}-{kind}.yaml"] = spec
            notes[f"{short}-{kind}.yaml"] = f"{kind} {arch} on {n} samples"
    label = {**specs["mlp-inference.yaml"], "determinism": "label", "top_k": 2}
    specs["mlp-inference-label.yaml"], notes["mlp-inference-label.yaml"] = label, "top-2 class ids (label profile)"
    x2, y2 = features(512, 8, 2, 4)
    binary = {"version": 1, "kind": "train",
              "model": {"arch": "mlp@1", "params": {**ARCH_PARAMS["mlp@1"], "out_features": 2}},
              "data": {"inputs": put("mlp2-inputs", x2), "labels": put("mlp2-labels", y2)},
              "training": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "epochs": 2, "batch_size": 64,
                           "order": put("mlp2-order", order(2, 512, 5))},
              "determinism": "pinned-f32"}
    specs["mlp-binary-train.yaml"], notes["mlp-binary-train.yaml"] = binary, "2-class mlp, adamw, pinned-f32"
    return ids, specs, notes


def build_collab(store: BlobStore) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, str]]:
    """Store the collab dataset and initial weights; return (blob ids by name, collab spec dicts by file name,
    one-line descriptions)."""
    ids = collab_ids(store)
    base: dict[str, Any] = {
        "version": 1, "kind": "collab",
        "model": {"arch": "mlp@1", "params": dict(COLLAB_PARAMS), "weights": ids["weights"]},
        "data": {"inputs": ids["train-inputs"], "labels": ids["train-labels"]},
        "training": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.002, "epochs": 2, "batch_size": 32},
        "rounds": 10, "participants": 4, "min_participants": 2,
        "aggregation": {"rule": "fedavg", "trim": 0},
        "checks": {"max_update_norm": 10.0, "round_seconds": 120.0},
        "determinism": "exact-f64", "seed": 7,
    }
    robust = {**base, "aggregation": {"rule": "trimmed_mean", "trim": 1}}
    specs = {"mlp-collab.yaml": base, "mlp-collab-robust.yaml": robust}
    notes = {"mlp-collab.yaml": "collaborative mlp@1 training, 4 participants, 10 rounds, fedavg",
             "mlp-collab-robust.yaml": ("collaborative mlp@1 training, 4 participants, 10 rounds, "
                                        "Byzantine-robust trimmed mean (trim 1)")}
    return ids, specs, notes


def collab_ids(store: BlobStore | None = None) -> dict[str, str]:
    """Blob ids of the collab example: `train-inputs`, `train-labels` (4,000 samples), `test-inputs`,
    `test-labels` (1,000 held-out samples), `weights` (initial mlp@1). Stores the blobs when `store` is given;
    without one only computes the ids (for benchmarks and tests that find the test set by id)."""
    from marketplace.blobs import blob_id_of

    def put(tensors: dict) -> str:
        data = dump_tensors(tensors)
        return store.put_bytes(data) if store is not None else blob_id_of(data)

    (xtr, ytr), (xte, yte) = mixture(COLLAB_TRAIN_N, 31), mixture(COLLAB_TEST_N, 32)
    return {"train-inputs": put(xtr), "train-labels": put(ytr), "test-inputs": put(xte),
            "test-labels": put(yte), "weights": put(weights("mlp@1", COLLAB_PARAMS))}


def collab_test_blobs() -> dict[str, str]:
    """The held-out collab test set's blob ids, `{"inputs": ..., "labels": ...}` (computed, nothing stored)."""
    ids = collab_ids()
    return {"inputs": ids["test-inputs"], "labels": ids["test-labels"]}


def write_collab(out: Path, specs: dict[str, dict[str, Any]], notes: dict[str, str], ids: dict[str, str]
                 ) -> list[Path]:
    """Write each collab spec as YAML with a header comment naming the held-out test set's blobs."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in sorted(specs.items()):
        head = (f"# Example: {notes[name]}.\n# Generated by scripts/make_examples.py (deterministic): run it "
                f"to put the blobs named here\n# into your store. Held-out test set (1,000 samples, not part "
                f"of the job):\n#   test-inputs {ids['test-inputs']}\n#   test-labels {ids['test-labels']}\n")
        p = out / name
        p.write_text(head + yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=120))
        paths.append(p)
    return paths


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists (`hidden: [32]`)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def write(out: Path, specs: dict[str, dict[str, Any]], notes: dict[str, str]) -> list[Path]:
    """Write each spec as YAML with a header comment, and examples/README.md's table next to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in sorted(specs.items()):
        head = (f"# Example: {notes[name]}.\n# Generated by scripts/make_examples.py (deterministic): run it to put "
                f"the blobs named here\n# into your store, then `agora run examples/specs/{name}`.\n")
        p = out / name
        p.write_text(head + yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=120))
        paths.append(p)
    return paths


def make_examples(store: BlobStore | Path, out: Path, collab_out: Path | None = None
                  ) -> tuple[dict[str, str], list[Path]]:
    """Put every example blob into `store` and write the specs to `out` (the collab specs to `collab_out`,
    default `out`/collab). Returns (name -> blob id, the spec files written)."""
    store = store if isinstance(store, BlobStore) else BlobStore(store)
    ids, specs, notes = build(store)
    paths = write(out, specs, notes)
    cids, cspecs, cnotes = build_collab(store)
    paths += write_collab(collab_out or out / "collab", cspecs, cnotes, cids)
    ids.update({f"collab-{k}": v for k, v in cids.items()})
    return ids, paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="blob store directory [default $AGORA_HOME/blobs]")
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "specs", help="where to write the specs")
    ap.add_argument("--collab-out", type=Path, default=None,
                    help="where to write the collab specs [default examples/collab; OUT/collab with --out]")
    args = ap.parse_args(argv)
    store = BlobStore(args.store) if args.store else default_store()
    collab_out = args.collab_out or (ROOT / "examples" / "collab" if args.out == ap.get_default("out")
                                     else args.out / "collab")
    ids, paths = make_examples(store, args.out, collab_out)
    for name, blob_id in ids.items():
        print(f"{name:<18} {blob_id}")
    print(f"{len(ids)} blobs in {store.root}; {len(paths)} specs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
