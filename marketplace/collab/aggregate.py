"""Checking and aggregating participants' updates, deterministically (numpy only, no torch).

Every participant and the requester recompute the same next global model from the same accepted updates, bit
for bit, so its blob id (sha256 of the canonical safetensors bytes) is "the aggregated model hash" anyone can
check. What makes that hold:
- updates are sorted by lower-cased provider address first, so arrival order never matters;
- all arithmetic is element-wise float64 (IEEE add / multiply / divide, correctly rounded everywhere), sums
  are accumulated one update at a time in that order (never numpy's pairwise reductions across updates),
  sorting for trimmed mean / median is exact, and the result is rounded once to float32;
- `encode` is `marketplace.tensors.dump_tensors`, whose byte layout is pinned.
The one reduction over many elements is Krum's squared distance (and the norm check), summed with numpy's
fixed pairwise order on contiguous float64 arrays; Krum only picks one of the inputs, so a last-bit difference
could only matter in an exact tie of scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from marketplace.blobs import blob_id_of
from marketplace.errors import SpecError
from marketplace.tensors import dump_tensors, load_tensors

Weights = Mapping[str, np.ndarray]
#: (provider address, weights, number of training samples)
Update = tuple[str, Weights, int]
#: The reason codes `check_update` answers with (the text before the first ":").
REJECT_CODES = ("names", "shape", "dtype", "nan", "norm")
RULES = ("fedavg", "trimmed_mean", "median", "krum")


def encode(weights: Weights) -> bytes:
    """The canonical safetensors bytes of a model (`marketplace.tensors.dump_tensors`)."""
    return dump_tensors(dict(weights))


def decode(data: bytes | memoryview, *, what: str = "update") -> dict[str, np.ndarray]:
    """A model from safetensors bytes (never unpickles). Raises SpecError."""
    return load_tensors(data, what=what)


def model_id(weights: Weights) -> str:
    """The blob id (`sha256:<hex>`) of the canonical encoding: the aggregated model hash."""
    return blob_id_of(encode(weights))


def update_norm(global_w: Weights, update_w: Weights, names: Sequence[str] | None = None) -> float:
    """L2 norm of (update - global) over all tensors (or `names`), in float64, tensors in name order."""
    total = 0.0
    for name in sorted(global_w if names is None else names):
        d = np.asarray(update_w[name], dtype=np.float64) - np.asarray(global_w[name], dtype=np.float64)
        total += float(np.add.reduce(np.ascontiguousarray(d * d).ravel()))
    return float(np.sqrt(total))


def check_update(global_w: Weights, update_w: Weights, *, max_norm: float) -> str | None:
    """None when `update_w` may be aggregated with `global_w`, else "code: detail" with code one of
    `REJECT_CODES`: names (other tensor names), shape, dtype (must be float32, like the global model), nan (a
    non-finite value), norm (L2 norm of update - global over all tensors, float64, above `max_norm`)."""
    if set(update_w) != set(global_w):
        missing, extra = sorted(set(global_w) - set(update_w)), sorted(set(update_w) - set(global_w))
        return f"names: missing {missing[:3]}, unexpected {extra[:3]}"
    for name in sorted(global_w):
        g, u = np.asarray(global_w[name]), np.asarray(update_w[name])
        if u.shape != g.shape:
            return f"shape: {name} is {list(u.shape)}, expected {list(g.shape)}"
        if u.dtype != np.float32 or u.dtype != g.dtype:
            return f"dtype: {name} is {u.dtype}, expected float32"
        if not np.isfinite(u).all():
            return f"nan: {name} has a non-finite value"
    norm = update_norm(global_w, update_w)
    if not norm <= max_norm:
        return f"norm: {norm:.6g} > max_update_norm {max_norm:.6g}"
    return None


def reason_code(reason: str) -> str:
    """The code of a `check_update` reason ("norm: 12.3 > ..." -> "norm")."""
    return reason.split(":", 1)[0]


def _sorted_updates(updates: Sequence[Update], names: list[str]) -> list[Update]:
    """Updates by lower-cased address; refuses duplicates and updates whose names differ from the global's."""
    ordered = sorted(updates, key=lambda u: u[0].lower())
    addrs = [u[0].lower() for u in ordered]
    if len(set(addrs)) != len(addrs):
        raise SpecError("aggregate: the same provider appears twice among the updates")
    for addr, w, _ in ordered:
        if sorted(w) != names:
            raise SpecError(f"aggregate: the update of {addr} has other tensor names than the global model")
    return ordered


def _stack(ordered: list[Update], name: str) -> np.ndarray:
    """[k, *shape] float64 of one tensor across the updates, in address order."""
    return np.stack([np.asarray(w[name], dtype=np.float64) for _, w, _ in ordered])


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    """Mean over axis 0, accumulated one row at a time (a fixed order of element-wise adds)."""
    acc = rows[0].copy()
    for r in rows[1:]:
        acc += r
    return acc / rows.shape[0]


def _fedavg(ordered: list[Update], name: str) -> np.ndarray:
    total = sum(n for _, _, n in ordered)
    if total <= 0:
        raise SpecError("aggregate: fedavg needs a positive total sample count")
    acc = np.zeros(np.shape(ordered[0][1][name]), dtype=np.float64)
    for _, w, n in ordered:
        acc += np.asarray(w[name], dtype=np.float64) * float(n)
    return acc / float(total)


def _median(rows: np.ndarray) -> np.ndarray:
    s = np.sort(rows, axis=0, kind="stable")
    k = s.shape[0]
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2.0


def _trimmed_mean(rows: np.ndarray, trim: int) -> np.ndarray:
    k = rows.shape[0]
    if k < 2 * trim + 1:
        return _median(rows)
    s = np.sort(rows, axis=0, kind="stable")
    return _mean_rows(s[trim:k - trim])


def _krum_pick(ordered: list[Update], names: list[str], f: int) -> int:
    """Index (in address order) of the update with the smallest sum of squared distances to its n - f - 2
    nearest others; ties go to the lower address."""
    n = len(ordered)
    dist = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = update_norm(ordered[i][1], ordered[j][1], names) ** 2
    near = n - f - 2
    scores = [float(sum(sorted(dist[i, j] for j in range(n) if j != i)[:near])) for i in range(n)]
    return min(range(n), key=lambda i: (scores[i], i))


def aggregate(global_w: Weights, updates: Sequence[Update], rule: str, trim: int = 0
              ) -> dict[str, np.ndarray]:
    """The next global model from the accepted `updates` ((provider address, weights, n_samples), in any
    order), as float32 arrays with the global model's names. Computed in float64 after sorting by lower-cased
    address:

    - fedavg: the mean weighted by n_samples;
    - trimmed_mean: per coordinate, drop the `trim` lowest and `trim` highest values and average the rest;
      with fewer than 2 * trim + 1 updates there is nothing left to average, so it falls back to the median;
    - median: per coordinate (the mean of the two middle values for an even count);
    - krum (`trim` = f): the update with the smallest sum of squared distances to its n - f - 2 nearest others
      (ties: the lower address), returned as is; with n <= 2f + 2 updates Krum's guarantee does not hold, so
      it falls back to the coordinate-wise median.

    No updates: `global_w` unchanged. Raises SpecError for an unknown rule, a negative trim, a provider given
    twice, or updates whose tensor names differ from the global model's (run `check_update` first)."""
    if rule not in RULES:
        raise SpecError(f"unknown aggregation rule {rule!r} (expected one of {', '.join(RULES)})")
    if trim < 0:
        raise SpecError(f"aggregation.trim must be >= 0, got {trim}")
    names = sorted(global_w)
    if not updates:
        return {k: np.asarray(global_w[k]) for k in names}
    ordered = _sorted_updates(updates, names)
    if rule == "krum" and len(ordered) > 2 * trim + 2:
        chosen = ordered[_krum_pick(ordered, names, trim)][1]
        return {k: np.ascontiguousarray(np.asarray(chosen[k]).astype(np.float32)) for k in names}
    out: dict[str, np.ndarray] = {}
    for k in names:
        if rule == "fedavg":
            v = _fedavg(ordered, k)
        elif rule == "trimmed_mean":
            v = _trimmed_mean(_stack(ordered, k), trim)
        else:  # median, or krum with too few updates
            v = _median(_stack(ordered, k))
        out[k] = np.ascontiguousarray(v.astype(np.float32))
    return out


__all__ = ["REJECT_CODES", "RULES", "Update", "Weights", "aggregate", "check_update", "decode", "encode",
           "model_id", "reason_code", "update_norm"]
