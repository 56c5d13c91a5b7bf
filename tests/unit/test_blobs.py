"""The blob store and `agora blob`: round trips, size caps, corruption, malformed ids, the CLI."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import marketplace.cli.blob  # noqa: F401  (registers `agora blob`)
from marketplace.blobs import BlobInfo, BlobStore, default_store
from marketplace.cli import app
from marketplace.errors import BlobIntegrityError, BlobNotFoundError, BlobTooLargeError, SpecError
from marketplace.tensors import dump_tensors, load_tensors


@pytest.fixture()
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _stored_files(store: BlobStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_put_get_round_trip_and_layout(store: BlobStore) -> None:
    data = b"hello tensors"
    hexd = hashlib.sha256(data).hexdigest()
    blob_id = store.put_bytes(data)
    assert blob_id == f"sha256:{hexd}"
    assert store.path(blob_id) == store.root / "sha256" / hexd[:2] / hexd
    assert store.has(blob_id) and store.get_bytes(blob_id) == data
    assert store.put_bytes(data) == blob_id  # idempotent
    assert store.ls() == [BlobInfo(blob_id, len(data), store.path(blob_id))]
    store.verify(blob_id)
    assert not list((store.root / "tmp").iterdir())  # no temp files left behind


def test_put_file_streams_and_matches_put_bytes(store: BlobStore, tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 5)  # crosses several 1 MiB reads
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    blob_id = store.put_file(src)
    assert blob_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.get_bytes(blob_id) == data


def test_oversized_blob_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", max_blob_bytes=1000)
    with pytest.raises(BlobTooLargeError) as err:
        store.put_bytes(b"x" * 1001)
    assert (err.value.size, err.value.limit) == (1001, 1000)
    src = tmp_path / "big.bin"
    src.write_bytes(b"y" * (3 << 20))
    with pytest.raises(BlobTooLargeError) as err2:
        store.put_file(src)
    assert err2.value.limit == 1000 and err2.value.size > 1000
    assert store.ls() == [] and _stored_files(store) == []


def test_get_bytes_checks_the_cap_before_reading(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    blob_id = store.put_bytes(b"z" * 5000)
    opened: list[str] = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(str(a[0])) or pytest.fail("read"))
    with pytest.raises(BlobTooLargeError) as err:
        store.get_bytes(blob_id, max_bytes=4096)
    assert (err.value.size, err.value.limit) == (5000, 4096)
    assert "5,000" in str(err.value) and "4,096" in str(err.value)
    assert opened == []


def test_corrupt_blob_raises_integrity_error(store: BlobStore) -> None:
    blob_id = store.put_bytes(b"original bytes")
    store.path(blob_id).write_bytes(b"tampered bytes")
    with pytest.raises(BlobIntegrityError, match="corrupt"):
        store.get_bytes(blob_id)
    with pytest.raises(BlobIntegrityError):
        store.verify(blob_id)


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 64, "0" * 64,
                                 "sha256:" + "0" * 64 + "/../x", ""])
def test_malformed_ids_are_spec_errors(store: BlobStore, bad: str) -> None:
    for call in (store.has, store.path, store.get_bytes, store.verify, store.remove):
        with pytest.raises(SpecError, match="malformed blob id"):
            call(bad)


def test_missing_blob_and_remove(store: BlobStore) -> None:
    missing = "sha256:" + "0" * 64
    assert not store.has(missing)
    with pytest.raises(BlobNotFoundError):
        store.get_bytes(missing)
    blob_id = store.put_bytes(b"gone soon")
    store.remove(blob_id)
    assert not store.has(blob_id)
    with pytest.raises(BlobNotFoundError):
        store.remove(blob_id)


def test_ls_is_sorted_and_ignores_strays(store: BlobStore) -> None:
    ids = [store.put_bytes(bytes([i]) * 10) for i in range(5)]
    (store.root / "sha256" / "zz").mkdir()
    (store.root / "sha256" / "zz" / "not-a-blob").write_text("x")
    assert [b.id for b in store.ls()] == sorted(ids)


def test_default_store_under_agora_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "home"))
    assert default_store().root == tmp_path / "home" / "blobs"


# ---------------------------------------------------------------- CLI
def _agora(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_cli_add_get_ls_verify(tmp_path: Path) -> None:
    st = tmp_path / "store"
    tensors = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    src = tmp_path / "x.safetensors"
    src.write_bytes(dump_tensors(tensors))
    code, out, _ = _agora("blob", "add", str(src), "--store", str(st), "--json")
    assert code == 0, out
    [entry] = json.loads(out)
    assert entry["tensors"] == {"x": {"dtype": "float32", "shape": [3, 4]}}
    dest = tmp_path / "back.safetensors"
    assert _agora("blob", "get", entry["id"], "-o", str(dest), "--store", str(st))[0] == 0
    assert dest.read_bytes() == src.read_bytes()
    code, out, _ = _agora("blob", "list", "--store", str(st), "--json")
    assert [b["id"] for b in json.loads(out)] == [entry["id"]]
    assert _agora("blob", "verify", "--store", str(st))[0] == 0
    BlobStore(st).path(entry["id"]).write_bytes(b"rot")
    code, _, err = _agora("blob", "verify", entry["id"], "--store", str(st))
    assert code != 0 and "corrupt" in err


def test_cli_add_csv_with_labels(tmp_path: Path) -> None:
    st = tmp_path / "store"
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,0\n3.5,-4,1\n0,0,2\n")
    code, out, _ = _agora("blob", "add", str(csv), "--from-csv", "--label-column", "label", "--store", str(st),
                          "--json")
    assert code == 0, out
    roles = {e["role"]: e for e in json.loads(out)}
    x = load_tensors(BlobStore(st).get_bytes(roles["inputs"]["id"]))["x"]
    y = load_tensors(BlobStore(st).get_bytes(roles["labels"]["id"]))["y"]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2], [3.5, -4], [0, 0]]
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 2]


def test_cli_add_refuses_pickle_and_stores_nothing(tmp_path: Path) -> None:
    st = tmp_path / "store"
    src = tmp_path / "model.pt"
    src.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    code, _, err = _agora("blob", "add", str(src), "--store", str(st))
    assert code != 0 and "pickle" in err
    assert BlobStore(st).ls() == []
