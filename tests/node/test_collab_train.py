"""Collaborative training's maths, end to end in one process with real torch: the example collab specs'
shards, every participant's local round in a real Sandbox, deterministic aggregation, round after round.

What this proves (the network, chain and payments are tested elsewhere):
- quality: m = 4 providers end within 1 accuracy point of m = 1 (same rounds, same local epochs);
- the aggregated model hash does not depend on the order updates arrive in, and anyone holding the update
  blobs recomputes it;
- the robust rule (trimmed mean) keeps accuracy within 2 points of honest when one participant sends
  global + 1000 * delta, while fedavg without checks is wrecked by the same poison, and the spec's norm check
  would have rejected it.
"""

from __future__ import annotations

import importlib.util
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from marketplace.blobs import BlobStore  # noqa: E402
from marketplace.collab.aggregate import (  # noqa: E402
    aggregate,
    check_update,
    decode,
    encode,
    model_id,
    reason_code,
)
from marketplace.collab.spec import CollabSpec, load_collab_spec, make_shards  # noqa: E402
from node.runtime.collab import evaluate_accuracy, train_round  # noqa: E402
from node.sandbox import Sandbox  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COLLAB = ROOT / "examples" / "collab"
POISON_FACTOR = 1000.0


def _make_examples() -> ModuleType:
    path = ROOT / "scripts" / "make_examples.py"
    mod_spec = importlib.util.spec_from_file_location("make_examples_collab", path)
    assert mod_spec and mod_spec.loader
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@dataclass
class Env:
    store: BlobStore
    sandbox: Sandbox
    test_x: dict[str, np.ndarray]
    test_y: dict[str, np.ndarray]
    work: Path
    runs: dict[tuple, Run] = field(default_factory=dict)


@dataclass
class Run:
    """One simulated collab job: accuracy after each round, each round's accepted updates (address, weights,
    n, blob id), the global model each round started from, each round's compute seconds per participant."""

    accuracy: list[float] = field(default_factory=list)
    updates: list[list[tuple[str, dict[str, np.ndarray], int, str]]] = field(default_factory=list)
    globals_: list[dict[str, np.ndarray]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    compute_s: list[list[float]] = field(default_factory=list)
    rejected: list[list[str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("collab")
    store = BlobStore(root / "store")
    mx = _make_examples()
    ids, specs, notes = mx.build_collab(store)
    written = mx.write_collab(root / "specs", specs, notes, ids)
    committed = sorted(p.name for p in COLLAB.glob("*.yaml"))
    assert committed == sorted(p.name for p in written)
    for p in written:  # the committed specs are exactly what make_examples writes
        assert (COLLAB / p.name).read_bytes() == p.read_bytes(), f"{p.name} is stale: rerun make_examples"
    assert mx.collab_ids() == ids  # the id-only path agrees with the stored blobs
    assert mx.collab_test_blobs() == {"inputs": ids["test-inputs"], "labels": ids["test-labels"]}
    with Sandbox(store, workers_dir=root / "workers") as sandbox:
        yield Env(store, sandbox, decode(store.get_bytes(ids["test-inputs"])),
                  decode(store.get_bytes(ids["test-labels"])), root / "work")


def provider(i: int) -> str:
    """Addresses whose sort order is not the participant order (arrival order must not matter)."""
    return "0x" + f"{(7 * i + 3) % 10:x}" * 40


def simulate(env: Env, spec: CollabSpec, m: int, *, rounds: int | None = None, poison: int | None = None,
             rule: str | None = None, checks: bool = False) -> Run:
    """Run the protocol's maths: shards, then per round every participant's train_round from the current
    global model, an optional poisoned participant (global + 1000 * its honest delta), optional update checks,
    and the aggregate as the next global model (stored, so the next round's jobs can name it)."""
    shards = make_shards(spec, env.store, m)
    assert spec.model.weights is not None
    g_blob = spec.model.weights
    g = decode(env.store.get_bytes(g_blob))
    run = Run()
    work = Path(tempfile.mkdtemp(dir=env.work.parent, prefix="run-"))
    for r in range(rounds or spec.rounds):
        ups, times, rejected = [], [], []
        for i, shard in enumerate(shards):
            u = train_round(env.sandbox, spec, g_blob, shard, work / f"r{r}-p{i}")
            times.append(u.compute_s)
            w, blob = u.weights, u.blob_id
            if i == poison:
                w = {k: (g[k].astype(np.float64) + POISON_FACTOR * (w[k].astype(np.float64) - g[k])
                         ).astype(np.float32) for k in w}
                blob = env.store.put_bytes(encode(w))
            if checks and (reason := check_update(g, w, max_norm=spec.checks.max_update_norm)) is not None:
                rejected.append(reason)
                continue
            ups.append((provider(i), w, shard["n"], blob))
        run.globals_.append(g)
        accepted = [(a, w, n) for a, w, n, _ in ups]
        g = aggregate(g, accepted, rule or spec.aggregation.rule, spec.aggregation.trim)
        g_blob = env.store.put_bytes(encode(g))
        run.model_ids.append(g_blob)
        run.updates.append(ups)
        run.compute_s.append(times)
        run.rejected.append(rejected)
        run.accuracy.append(evaluate_accuracy(spec.model, g, env.test_x, env.test_y))
    return run


def cached(env: Env, name: str, m: int, **kw: Any) -> Run:
    key = (name, m, *sorted(kw.items()))
    if key not in env.runs:
        env.runs[key] = simulate(env, load_collab_spec(COLLAB / name), m, **kw)
        run = env.runs[key]
        print(f"\n{key}: accuracy per round {[round(a, 3) for a in run.accuracy]}; compute s per round "
              f"{[round(sum(t), 3) for t in run.compute_s]} (max participant "
              f"{max(max(t) for t in run.compute_s):.3f})")
    return env.runs[key]


def test_four_providers_match_one_within_a_point(env: Env) -> None:
    one = cached(env, "mlp-collab.yaml", 1)
    four = cached(env, "mlp-collab.yaml", 4)
    assert 0.85 <= one.accuracy[-1] <= 0.97  # learns, and the dataset is not trivially separable
    assert abs(four.accuracy[-1] - one.accuracy[-1]) <= 0.01, (one.accuracy, four.accuracy)
    assert four.accuracy[-1] > four.accuracy[0] + 0.1  # the rounds, not round 1, did the work
    assert all(len(u) == 4 for u in four.updates)


def test_aggregate_hash_is_the_same_in_any_order_and_from_the_blobs(env: Env) -> None:
    four = cached(env, "mlp-collab.yaml", 4)
    spec = load_collab_spec(COLLAB / "mlp-collab.yaml")
    for r in (0, len(four.updates) - 1):
        ups = four.updates[r]
        # a participant recomputes from the update blobs it fetched, in whatever order they arrived
        fetched = [(a, decode(env.store.get_bytes(blob)), n) for a, _, n, blob in ups]
        orders = [fetched, fetched[::-1], random.Random(r).sample(fetched, len(fetched))]
        ids = {model_id(aggregate(four.globals_[r], o, spec.aggregation.rule, spec.aggregation.trim))
               for o in orders}
        assert ids == {four.model_ids[r]}
    assert len(set(four.model_ids)) == len(four.model_ids)  # every round moved the model


def test_robust_rule_survives_a_poisoned_participant(env: Env) -> None:
    honest = cached(env, "mlp-collab-robust.yaml", 4)
    poisoned = cached(env, "mlp-collab-robust.yaml", 4, poison=0)
    assert honest.accuracy[-1] >= 0.85
    assert abs(poisoned.accuracy[-1] - honest.accuracy[-1]) <= 0.02, (honest.accuracy, poisoned.accuracy)
    spec = load_collab_spec(COLLAB / "mlp-collab-robust.yaml")
    # the aggregation rule alone did it (no update was checked); the spec's norm check would also catch it
    g, bad = poisoned.globals_[-1], next(w for a, w, _, _ in poisoned.updates[-1] if a == provider(0))
    reason = check_update(g, bad, max_norm=spec.checks.max_update_norm)
    assert reason is not None and reason_code(reason) == "norm"
    assert all(check_update(g, w, max_norm=spec.checks.max_update_norm) is None
               for a, w, _, _ in poisoned.updates[-1] if a != provider(0))


def test_fedavg_without_checks_is_wrecked_by_the_same_poison(env: Env) -> None:
    honest = cached(env, "mlp-collab.yaml", 4)
    wrecked = cached(env, "mlp-collab.yaml", 4, poison=0, rounds=2)
    assert wrecked.accuracy[-1] < honest.accuracy[1] - 0.3, (honest.accuracy[:2], wrecked.accuracy)
    checked = cached(env, "mlp-collab.yaml", 4, poison=0, rounds=2, checks=True)  # the requester's checks
    assert [[reason_code(x) for x in r] for r in checked.rejected] == [["norm"], ["norm"]]
    assert abs(checked.accuracy[-1] - honest.accuracy[1]) <= 0.03, (honest.accuracy[:2], checked.accuracy)
