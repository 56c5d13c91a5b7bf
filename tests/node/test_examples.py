"""Every shipped example spec runs with the real executor and verifies: the example weights still match the
models' parameter names and shapes, and the committed specs name blobs that make_examples really produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.integration  # starts the example builder as a subprocess

from marketplace.blobs import BlobStore  # noqa: E402
from marketplace.results import verify_result_dir  # noqa: E402
from marketplace.spec import load_spec  # noqa: E402
from node.sandbox import run_in_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "examples" / "specs").glob("*.yaml"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    root = tmp_path_factory.mktemp("example-blobs")
    out = tmp_path_factory.mktemp("example-specs")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_examples.py"), "--store", str(root), "--out",
                    str(out)], check=True, capture_output=True, timeout=300)
    for spec in SPECS:  # the committed specs are exactly what the script writes
        assert (out / spec.name).read_bytes() == spec.read_bytes(), f"{spec.name} is stale: rerun make_examples"
    return BlobStore(root)


def test_there_is_an_example_for_every_kind_and_arch() -> None:
    specs = [load_spec(p) for p in SPECS]
    assert {s.kind for s in specs} == {"inference", "train", "finetune", "evaluate"}
    assert {s.model.arch for s in specs} == {"mlp@1", "cnn@1", "transformer@1", "minilm-classifier@1"}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_runs_and_verifies(path: Path, store: BlobStore, tmp_path: Path) -> None:
    spec = load_spec(path)
    manifest = run_in_process(spec, store, tmp_path)
    assert manifest.status == "ok", manifest.error
    assert manifest.result_hash and manifest.profile == spec.determinism
    assert "0x" + verify_result_dir(tmp_path).root.hex() == manifest.result_hash
