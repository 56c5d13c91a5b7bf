"""Check a job's tensors against its spec before any compute: names, dtypes, ranks, shapes, ranges, labels, order.

Every complaint is a `SpecError` whose message starts with "bad-input:" and names the tensor and what was
expected, so a provider can reject the job (and a requester can fix it) without running anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from marketplace.archs import get_arch, validate_params
from marketplace.errors import SpecError
from marketplace.spec import JobSpec


@dataclass(frozen=True)
class Prepared:
    """Validated data: `x` the model inputs (int tensors as int64), `y` labels (int64 [N] class ids, or float
    targets [N, C]) or None, `n` the number of samples, `num_outputs` the model's output width, `loss` the loss
    that training / evaluation uses ("cross_entropy" or "mse"), `order` [epochs, N] int64 or None."""

    x: dict[str, np.ndarray]
    y: np.ndarray | None
    n: int
    num_outputs: int
    loss: str | None
    order: np.ndarray | None


def _bad(msg: str) -> SpecError:
    return SpecError(f"bad-input: {msg}")


def num_outputs(arch: str, params: Mapping) -> int:
    """Width of the model's output (classes, or mlp out_features)."""
    p = validate_params(arch, dict(params))
    return int(getattr(p, "out_features", None) or p.num_classes)  # type: ignore[attr-defined]


def _check_features(spec: JobSpec, tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    arch = get_arch(spec.model.arch)
    p = validate_params(spec.model.arch, dict(spec.model.params))
    want, got = set(arch.inputs), set(tensors)
    if want != got:
        raise _bad(f"inputs blob must hold exactly {sorted(want)} for {arch.name}, got {sorted(got)}")
    out: dict[str, np.ndarray] = {}
    n: int | None = None
    for name, (kind, rank) in arch.inputs.items():
        a = np.asarray(tensors[name])
        if (kind == "float" and a.dtype.kind != "f") or (kind == "int" and a.dtype.kind not in "iu"):
            raise _bad(f"tensor {name!r} has dtype {a.dtype}, expected {'a float' if kind == 'float' else 'an int'} "
                       f"type")
        if a.ndim != rank:
            raise _bad(f"tensor {name!r} has shape {list(a.shape)} (rank {a.ndim}), expected rank {rank}")
        if a.shape[0] < 1:
            raise _bad(f"tensor {name!r} holds no samples")
        if n is not None and a.shape[0] != n:
            raise _bad(f"tensor {name!r} has {a.shape[0]} samples, other inputs have {n}")
        n = a.shape[0]
        if kind == "float":
            if not np.isfinite(a).all():
                raise _bad(f"tensor {name!r} contains NaN or infinity")
        else:
            a = a.astype(np.int64, copy=False)
        out[name] = a
    assert n is not None
    name = arch.name
    if name == "mlp@1" and out["x"].shape[1] != p.in_features:  # type: ignore[attr-defined]
        raise _bad(f"x has shape {list(out['x'].shape)}, expected [N, {p.in_features}] (in_features)")  # type: ignore
    if name == "cnn@1":
        c, s = p.in_channels, p.image_size  # type: ignore[attr-defined]
        if out["x"].shape[1:] != (c, s, s):
            raise _bad(f"x has shape {list(out['x'].shape)}, expected [N, {c}, {s}, {s}] (in_channels, image_size)")
    if name in ("transformer@1", "minilm-classifier@1"):
        ids = out["input_ids"]
        if name == "transformer@1":
            vocab = p.vocab_size  # type: ignore[attr-defined]
        else:
            from node.runtime.minilm import config

            vocab = config()["vocab_size"]
        if not 1 <= ids.shape[1] <= p.max_len:  # type: ignore[attr-defined]
            raise _bad(f"input_ids has sequence length {ids.shape[1]}, expected 1..{p.max_len} (max_len)")  # type: ignore
        if ids.min() < 0 or ids.max() >= vocab:
            raise _bad(f"input_ids holds token ids in [{ids.min()}, {ids.max()}], expected 0..{vocab - 1} "
                       f"(vocab_size {vocab})")
    if name == "minilm-classifier@1":
        mask = out["attention_mask"]
        if mask.shape != out["input_ids"].shape:
            raise _bad(f"attention_mask has shape {list(mask.shape)}, input_ids {list(out['input_ids'].shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise _bad("attention_mask must hold only 0 and 1")
        empty = np.flatnonzero(mask.sum(axis=1) == 0)
        if empty.size:
            raise _bad(f"attention_mask row(s) {empty[:5].tolist()} mask out every token")
    return out, n


def _check_labels(tensors: Mapping[str, np.ndarray], n: int, c: int, loss: str) -> np.ndarray:
    if set(tensors) != {"y"}:
        raise _bad(f"labels blob must hold exactly ['y'], got {sorted(tensors)}")
    y = np.asarray(tensors["y"])
    if loss == "cross_entropy":
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise _bad(f"labels y has dtype {y.dtype} shape {list(y.shape)}, expected int64 [N] class ids "
                       f"for cross_entropy")
        if y.shape[0] != n:
            raise _bad(f"labels y has {y.shape[0]} entries, inputs have {n} samples")
        if y.min() < 0 or y.max() >= c:
            raise _bad(f"labels y holds classes in [{y.min()}, {y.max()}], expected 0..{c - 1}")
        return y.astype(np.int64, copy=False)
    if y.dtype.kind != "f":
        raise _bad(f"labels y has dtype {y.dtype}, expected float targets for mse")
    if y.ndim == 1 and c == 1:
        y = y[:, None]
    if y.shape != (n, c):
        raise _bad(f"labels y has shape {list(y.shape)}, expected [{n}, {c}] for mse")
    if not np.isfinite(y).all():
        raise _bad("labels y contains NaN or infinity")
    return y


def check(spec: JobSpec, data: Mapping[str, Mapping[str, np.ndarray]], order: np.ndarray | None = None) -> Prepared:
    """Validate `data` ({"inputs": {...}, "labels": {...}}) and `order` against `spec`. Raises SpecError."""
    if not isinstance(data, Mapping) or "inputs" not in data:
        raise _bad("no `inputs` tensors given")
    extra = sorted(set(data) - set(spec.data))
    if extra:
        raise _bad(f"tensor group(s) {extra} given but the spec names no such data")
    x, n = _check_features(spec, data["inputs"])
    c = num_outputs(spec.model.arch, spec.model.params)
    y, loss = None, None
    if spec.kind != "inference":
        if "labels" not in data:
            raise _bad(f"a {spec.kind} job needs `labels` tensors")
        if spec.training is not None:
            loss = spec.training.loss
        else:  # evaluate: the labels' dtype says which loss
            y_raw = np.asarray(data["labels"].get("y", np.zeros(0, np.int64)))
            loss = "mse" if y_raw.dtype.kind == "f" else "cross_entropy"
        y = _check_labels(data["labels"], n, c, loss)
    if spec.kind == "inference" and spec.determinism == "label" and spec.top_k > c:
        raise _bad(f"top_k {spec.top_k} exceeds the model's {c} classes")
    if order is not None:
        if spec.training is None:
            raise _bad("an order tensor was given but the job does not train")
        if spec.training.order is None:
            raise _bad("an order tensor was given but the spec names no training.order blob")
        order = np.asarray(order)
        epochs = spec.training.epochs
        if order.dtype.kind not in "iu" or order.shape != (epochs, n):
            raise _bad(f"order has dtype {order.dtype} shape {list(order.shape)}, expected int64 [{epochs}, {n}] "
                       f"(epochs, N)")
        if order.min() < 0 or order.max() >= n:
            raise _bad(f"order holds indices in [{order.min()}, {order.max()}], expected 0..{n - 1}")
        order = order.astype(np.int64, copy=False)
    elif spec.training is not None and spec.training.order is not None:
        raise _bad("the spec names a training.order blob but no order tensor was given")
    return Prepared(x=x, y=y, n=n, num_outputs=c, loss=loss, order=order)
