"""Update checks and deterministic robust aggregation (numpy only)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from marketplace.blobs import blob_id_of
from marketplace.collab.aggregate import (
    aggregate,
    check_update,
    decode,
    encode,
    model_id,
    reason_code,
    update_norm,
)
from marketplace.errors import SpecError

SHAPES = {"layers.0.weight": (8, 5), "layers.0.bias": (8,), "layers.1.weight": (3, 8), "layers.1.bias": (3,)}
ADDRS = [f"0x{c * 40}" for c in "a1b2e"]  # mixed case below, to check the sort is case-insensitive


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {k: (g.random(s) * 2 - 1).astype(np.float32) * np.float32(scale) for k, s in SHAPES.items()}


@pytest.fixture
def global_w() -> dict[str, np.ndarray]:
    return model(0)


def honest(global_w: dict[str, np.ndarray], n: int = 4) -> list[tuple[str, dict[str, np.ndarray], int]]:
    """n updates: global + a shared step + a little per-provider noise, with varied sample counts."""
    step = model(99, 0.1)
    out = []
    for i in range(n):
        noise = model(100 + i, 0.01)
        w = {k: (global_w[k] + step[k] + noise[k]).astype(np.float32) for k in global_w}
        out.append((ADDRS[i].upper().replace("0X", "0x") if i % 2 else ADDRS[i], w, 100 + 10 * i))
    return out


def flat(w: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([w[k].astype(np.float64).ravel() for k in sorted(w)])


def dist(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.linalg.norm(flat(a) - flat(b)))


# ---------------------------------------------------------------- encoding
def test_encode_is_canonical_and_model_id_is_its_blob_id(global_w: dict[str, np.ndarray]) -> None:
    data = encode(global_w)
    assert encode(dict(reversed(list(global_w.items())))) == data
    assert model_id(global_w) == blob_id_of(data)
    back = decode(data)
    assert set(back) == set(global_w) and all(np.array_equal(back[k], global_w[k]) for k in global_w)


# ---------------------------------------------------------------- checks
def test_an_honest_update_passes(global_w: dict[str, np.ndarray]) -> None:
    _, w, _ = honest(global_w)[0]
    assert check_update(global_w, w, max_norm=10.0) is None
    assert 0 < update_norm(global_w, w) < 10.0


def _bad_updates(global_w: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    ok = honest(global_w)[0][1]
    nan = {**ok, "layers.1.bias": np.array([0, np.nan, 0], dtype=np.float32)}
    inf = {**ok, "layers.0.bias": np.full(8, np.inf, dtype=np.float32)}
    shape = {**ok, "layers.1.weight": np.zeros((8, 3), dtype=np.float32)}
    extra = {**ok, "extra": np.zeros(1, dtype=np.float32)}
    missing = {k: v for k, v in ok.items() if k != "layers.0.bias"}
    f64 = {k: v.astype(np.float64) for k, v in ok.items()}
    huge = {k: (global_w[k] + 1000 * (ok[k] - global_w[k])).astype(np.float32) for k in ok}
    return {"nan": nan, "nan-inf": inf, "shape": shape, "names": extra, "names-missing": missing,
            "dtype": f64, "norm": huge}


@pytest.mark.parametrize("case", ["nan", "nan-inf", "shape", "names", "names-missing", "dtype", "norm"])
def test_bad_updates_are_rejected_with_their_code(global_w: dict[str, np.ndarray], case: str) -> None:
    reason = check_update(global_w, _bad_updates(global_w)[case], max_norm=10.0)
    assert reason is not None and reason_code(reason) == case.split("-")[0], reason


# ---------------------------------------------------------------- aggregation
def wild(global_w: dict[str, np.ndarray], n: int = 5) -> list[tuple[str, dict[str, np.ndarray], int]]:
    """Updates where two providers send +-1e20 and the others small values: float64 sums cancel, so the order
    of summation shows in the float32 result ((1e20 + x) - 1e20 = 0, (1e20 - 1e20) + x = x)."""
    out = []
    for i in range(n):
        g = np.random.default_rng(200 + i)
        big = {0: 1e20, 1: -1e20}.get(i, 0.0)
        w = {k: (g.random(s) + big).astype(np.float32) for k, s in SHAPES.items()}
        out.append((ADDRS[i], w, 1))
    return out


@pytest.mark.parametrize("rule", ["fedavg", "trimmed_mean", "median", "krum"])
def test_arrival_order_never_changes_the_bytes(global_w: dict[str, np.ndarray], rule: str) -> None:
    for ups in (honest(global_w, 5), wild(global_w)):
        ids = {model_id(aggregate(global_w, list(p), rule, 1)) for p in itertools.permutations(ups)}
        assert len(ids) == 1


def test_summation_order_matters_for_these_updates(global_w: dict[str, np.ndarray]) -> None:
    """Guard for the test above: summing the wild updates in another order changes the float32 mean, so the
    equality there comes from aggregate's sort, not from luck."""
    ups = wild(global_w)
    k = "layers.0.weight"
    means = {(sum(np.asarray(w[k], np.float64) * n for _, w, n in p) / len(p)).astype(np.float32).tobytes()
             for p in itertools.permutations(ups)}
    assert len(means) > 1


def test_fedavg_of_identical_updates_is_that_update_bit_for_bit(global_w: dict[str, np.ndarray]) -> None:
    _, w, _ = honest(global_w)[0]
    ups = [(a, w, n) for a, n in zip(ADDRS, (1, 7, 1000, 333), strict=False)]
    out = aggregate(global_w, ups, "fedavg")
    assert encode(out) == encode(w)
    for rule in ("trimmed_mean", "median", "krum"):
        assert encode(aggregate(global_w, ups, rule, 1)) == encode(w), rule


def test_fedavg_is_the_sample_weighted_mean(global_w: dict[str, np.ndarray]) -> None:
    ups = honest(global_w, 3)
    out = aggregate(global_w, ups, "fedavg")
    total = sum(n for _, _, n in ups)
    for k in global_w:
        want = sum(w[k].astype(np.float64) * n for _, w, n in ups) / total
        np.testing.assert_allclose(out[k], want, rtol=1e-6, atol=1e-7)
        assert out[k].dtype == np.float32


def test_median_and_trimmed_mean_per_coordinate(global_w: dict[str, np.ndarray]) -> None:
    one = {k: np.ones_like(v) for k, v in global_w.items()}
    ups = [(a, {k: v * np.float32(c) for k, v in one.items()}, 1) for a, c in zip(ADDRS, (1, 2, 4, 100, -50),
                                                                                strict=False)]
    med = aggregate(global_w, ups, "median")
    trim = aggregate(global_w, ups, "trimmed_mean", 1)
    assert all((med[k] == 2).all() for k in med)
    assert all(np.allclose(trim[k], 7 / 3) for k in trim)  # mean of 1, 2, 4
    even = aggregate(global_w, ups[:4], "median")
    assert all((even[k] == 3).all() for k in even)  # mean of the middle two (2, 4)
    fallback = aggregate(global_w, ups[:2], "trimmed_mean", 1)  # 2 < 2 * 1 + 1 -> median
    assert all((fallback[k] == 1.5).all() for k in fallback)


def test_no_updates_keep_the_global_model(global_w: dict[str, np.ndarray]) -> None:
    for rule in ("fedavg", "trimmed_mean", "median", "krum"):
        assert encode(aggregate(global_w, [], rule, 1)) == encode(global_w)


def test_aggregate_refuses_bad_calls(global_w: dict[str, np.ndarray]) -> None:
    ups = honest(global_w, 2)
    with pytest.raises(SpecError, match="unknown aggregation rule"):
        aggregate(global_w, ups, "mean")
    with pytest.raises(SpecError, match="same provider appears twice"):
        aggregate(global_w, [ups[0], (ups[0][0].upper().replace("0X", "0x"), ups[1][1], 5)], "fedavg")
    with pytest.raises(SpecError, match="other tensor names"):
        aggregate(global_w, [(ADDRS[0], {"x": np.zeros(1, np.float32)}, 1)], "fedavg")


@pytest.mark.parametrize("poison", ["scaled", "flipped"])
def test_robust_rules_survive_one_poisoned_update_and_fedavg_does_not(global_w: dict[str, np.ndarray],
                                                                      poison: str) -> None:
    ups = honest(global_w, 5)
    honest_mean = aggregate(global_w, ups[:4], "fedavg")
    a, w, n = ups[4]
    delta = {k: w[k].astype(np.float64) - global_w[k] for k in w}
    factor = 1000.0 if poison == "scaled" else -10.0
    bad = {k: (global_w[k] + factor * delta[k]).astype(np.float32) for k in w}
    poisoned = [*ups[:4], (a, bad, n)]
    step = dist(honest_mean, global_w)  # the size of an honest round's move
    assert dist(aggregate(global_w, poisoned, "fedavg"), honest_mean) > 1.5 * step
    for rule in ("trimmed_mean", "median", "krum"):
        got = aggregate(global_w, poisoned, rule, 1)
        assert dist(got, honest_mean) < 0.2 * step, rule


def test_krum_returns_one_of_the_updates(global_w: dict[str, np.ndarray]) -> None:
    ups = honest(global_w, 5)
    out = encode(aggregate(global_w, ups, "krum", 1))
    assert out in {encode(w) for _, w, _ in ups}
    # too few updates for f = 1 (n <= 2f + 2): coordinate-wise median instead
    assert encode(aggregate(global_w, ups[:4], "krum", 1)) == encode(aggregate(global_w, ups[:4], "median"))
