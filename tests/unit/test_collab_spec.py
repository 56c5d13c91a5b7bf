"""Collab specs: validation naming the field, canonical encoding, deterministic shards, round job specs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from marketplace.blobs import BlobStore
from marketplace.collab.spec import load_collab_spec, local_spec, make_shards, parse_collab_spec
from marketplace.errors import SpecError
from marketplace.tensors import dump_tensors, load_tensors

REPO = Path(__file__).resolve().parents[2]
BLOB = "sha256:" + "ab" * 32
BASE: dict[str, Any] = {
    "version": 1,
    "kind": "collab",
    "model": {"arch": "mlp@1", "params": {"in_features": 3, "hidden": [4], "out_features": 2},
              "weights": BLOB},
    "data": {"inputs": BLOB, "labels": BLOB},
    "training": {"lr": 0.1, "batch_size": 8, "epochs": 1},
    "rounds": 3,
    "participants": 4,
    "aggregation": {"rule": "trimmed_mean", "trim": 1},
    "checks": {"max_update_norm": 5.0},
    "seed": 3,
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the dotted `path` set to `value` (None deletes it)."""
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return d


def test_base_spec_is_valid_and_canonical() -> None:
    spec = parse_collab_spec(BASE)
    assert spec.kind == "collab" and spec.min_participants == 1 and spec.determinism == "exact-f64"
    assert spec.blobs() == [BLOB, BLOB, BLOB]
    reordered = parse_collab_spec(dict(reversed(list(BASE.items()))))
    assert reordered.canonical_json() == spec.canonical_json() and len(spec.spec_hash()) == 32
    assert parse_collab_spec(spec_with("seed", 4)).spec_hash() != spec.spec_hash()


@pytest.mark.parametrize("path,value,named", [
    ("model.weights", None, "model.weights"),
    ("training.order", BLOB, "training.order"),
    ("aggregation.trim", 2, "aggregation.trim"),            # trimmed_mean: 4 participants <= 2 * 2
    ("aggregation", {"rule": "krum", "trim": 1}, "aggregation.trim"),  # krum: 4 <= 2 * 1 + 2
    ("aggregation.rule", "mean", "aggregation.rule"),
    ("min_participants", 5, "min_participants"),
    ("participants", 65, "participants"),
    ("rounds", 0, "rounds"),
    ("checks.max_update_norm", 0, "checks.max_update_norm"),
    ("checks.max_update_norm", float("inf"), "checks.max_update_norm"),
    ("checks.round_seconds", -1, "checks.round_seconds"),
    ("checks", None, "checks"),
    ("determinism", "label", "determinism"),
    ("kind", "train", "kind"),
    ("data.order", BLOB, "data.order"),
    ("surprise", 1, "surprise"),
])
def test_invalid_specs_name_the_field(path: str, value: Any, named: str) -> None:
    with pytest.raises(SpecError, match=named.replace(".", r"\.")):
        parse_collab_spec(spec_with(path, value))


def test_pretrained_arch_is_refused() -> None:
    data = spec_with("model", {"arch": "minilm-classifier@1", "params": {"num_classes": 2}, "weights": BLOB})
    with pytest.raises(SpecError, match="model.arch: minilm-classifier@1 is pretrained"):
        parse_collab_spec(data)


def test_krum_with_enough_participants_is_valid() -> None:
    spec = parse_collab_spec({**spec_with("aggregation", {"rule": "krum", "trim": 1}), "participants": 5})
    assert spec.aggregation.rule == "krum" and spec.aggregation.trim == 1


def test_load_collab_spec_reads_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    assert load_collab_spec(p) == parse_collab_spec(BASE)
    p.write_text("rounds: [")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_collab_spec(p)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[BlobStore, dict[str, Any]]:
    """10 samples whose features encode their index, so shards can be traced back."""
    store = BlobStore(tmp_path / "store")
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    y = (np.arange(10) % 2).astype(np.int64)
    data = spec_with("data", {"inputs": store.put_bytes(dump_tensors({"x": x})),
                              "labels": store.put_bytes(dump_tensors({"y": y}))})
    return store, data


def test_make_shards_partitions_a_seeded_permutation(dataset: tuple[BlobStore, dict[str, Any]]) -> None:
    store, data = dataset
    spec = parse_collab_spec(data)
    shards = make_shards(spec, store, 3)
    assert [s["n"] for s in shards] == [4, 3, 3]
    rows = []
    for s in shards:
        x = load_tensors(store.get_bytes(s["inputs"]))["x"]
        y = load_tensors(store.get_bytes(s["labels"]))["y"]
        assert x.shape == (s["n"], 3) and y.shape == (s["n"],)
        idx = (x[:, 0] // 3).astype(int)
        assert (y == idx % 2).all()  # labels travel with their samples
        rows.extend(idx.tolist())
    assert rows == np.random.default_rng(spec.seed).permutation(10).tolist()
    assert make_shards(spec, store, 3) == shards  # deterministic: the same blob ids again
    assert make_shards(parse_collab_spec({**data, "seed": 4}), store, 3) != shards


def test_make_shards_refuses_bad_counts(dataset: tuple[BlobStore, dict[str, Any]]) -> None:
    store, data = dataset
    spec = parse_collab_spec(data)
    with pytest.raises(SpecError, match="cannot cut 10 samples into 11 shards"):
        make_shards(spec, store, 11)
    short = store.put_bytes(dump_tensors({"y": np.zeros(9, dtype=np.int64)}))
    with pytest.raises(SpecError, match="share their first dimension"):
        make_shards(parse_collab_spec({**data, "data": {**data["data"], "labels": short}}), store, 2)


def test_local_spec_is_a_finetune_job_of_the_shard() -> None:
    spec = parse_collab_spec(BASE)
    g, i, lab = "sha256:" + "01" * 32, "sha256:" + "02" * 32, "sha256:" + "03" * 32
    job = local_spec(spec, g, {"inputs": i, "labels": lab, "n": 7})
    assert job.kind == "finetune" and job.model.weights == g and job.data == {"inputs": i, "labels": lab}
    assert job.training == spec.training and job.model.params == spec.model.params
    assert job.limits == spec.limits and job.determinism == spec.determinism
    with pytest.raises(SpecError, match="malformed|pattern"):
        local_spec(spec, "sha256:nope", {"inputs": i, "labels": lab})


def test_example_collab_specs_are_valid() -> None:
    paths = sorted((REPO / "examples" / "collab").glob("*.yaml"))
    specs = {p.name: load_collab_spec(p) for p in paths}
    assert {s.aggregation.rule for s in specs.values()} >= {"fedavg", "trimmed_mean"}
