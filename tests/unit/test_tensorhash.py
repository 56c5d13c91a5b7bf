"""Canonical result hashing invariants, chunk proofs, result manifests and result directories."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from eth_utils import keccak

from marketplace.errors import ResultMismatchError, SpecError
from marketplace.results import ResultManifest, verify_result_dir, write_outputs
from marketplace.tensorhash import (
    chunk_proof,
    decode_chunk,
    measure_hash_throughput,
    tensor_bytes,
    tensor_hash,
    tensor_header,
    verify_chunk,
)
from marketplace.tensors import dump_tensors

CB = 64  # small chunks so tests cross many boundaries


def root(tensors: dict, **kw) -> bytes:
    return tensor_hash(tensors, **kw).root


def with_bits(values: list[int], dtype: str, utype: str) -> np.ndarray:
    return np.array(values, dtype=utype).view(dtype)


def test_negative_zero_equals_positive_zero() -> None:
    for dt in (np.float16, np.float32, np.float64):
        assert root({"t": np.array([0.0, 1.0], dt)}) == root({"t": np.array([-0.0, 1.0], dt)})
    assert root({"t": np.array([0.0], np.float32)}) != root({"t": np.array([1e-45], np.float32)})


def test_nan_payloads_and_signs_hash_equal() -> None:
    nans32 = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FC12345, 0xFFFFFFFF]
    roots = {root({"t": with_bits([b, 0x3F800000], "float32", "uint32")}) for b in nans32}
    assert len(roots) == 1
    nans64 = [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001]
    assert len({root({"t": with_bits([b], "float64", "uint64")}) for b in nans64}) == 1
    nans16 = [0x7E00, 0xFE00, 0x7C01]
    assert len({root({"t": with_bits([b], "float16", "uint16")}) for b in nans16}) == 1
    assert bytes(tensor_bytes(with_bits([0xFFC00001], "float32", "uint32"))) == bytes.fromhex("0000c07f")


def test_canonical_bytes_do_not_copy_clean_arrays() -> None:
    a = np.arange(1000, dtype=np.float32)
    assert np.shares_memory(np.frombuffer(tensor_bytes(a), np.float32), a)
    b = a.copy()
    b[3] = -0.0
    out = np.frombuffer(tensor_bytes(b), np.float32)
    assert not np.shares_memory(out, b) and np.signbit(b[3]) and not np.signbit(out[3])


def test_dtype_and_shape_changes_change_the_root() -> None:
    a = np.arange(12, dtype=np.float32)
    base = root({"t": a})
    assert root({"t": a.astype(np.float64)}) != base
    assert root({"t": a.reshape(3, 4)}) != base
    assert root({"t": a.reshape(3, 4)}) != root({"t": a.reshape(4, 3)})
    assert root({"t": a.view(np.int32)}) != base  # same bytes, other dtype
    assert root({"u": a}) != base  # the name is part of it
    assert root({"t": a}, chunk_bytes=128) != root({"t": a}, chunk_bytes=64)


def test_name_order_and_layout_are_irrelevant() -> None:
    a, b = np.arange(6, dtype=np.int64), np.ones((2, 3), np.float32)
    assert root({"a": a, "b": b}) == root({"b": b, "a": a})
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert root({"m": m.T}) == root({"m": np.ascontiguousarray(m.T)})
    assert root({"m": m.astype(">f4")}) == root({"m": m})  # big-endian input


def test_scalars_empties_and_bools() -> None:
    h = tensor_hash({"loss": np.array(0.5, np.float32), "e": np.zeros((0, 4), np.float32),
                        "b": np.array([True, False])}, chunk_bytes=CB)
    assert h.tensors["loss"].shape == () and len(h.tensors["loss"].chunks) == 1
    assert h.tensors["e"].chunks == () and h.tensors["e"].digest == keccak(tensor_header("e", "float32", (0, 4), CB))
    assert len(h.root) == 32 and h.hex == "0x" + h.root.hex()
    with pytest.raises(SpecError, match="dtype"):
        tensor_hash({"c": np.zeros(3, np.complex64)})
    with pytest.raises(ValueError):
        tensor_hash({"t": np.zeros(3)}, chunk_bytes=100)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 32, 33, 1000])
def test_chunking_boundaries(n: int) -> None:
    a = np.arange(n, dtype=np.float32) + 0.5  # 16 float32 per 64-byte chunk
    h = tensor_hash({"t": a}, chunk_bytes=CB, threads=1)
    raw = a.tobytes()
    expected = [hashlib.sha256(raw[i:i + CB]).digest() for i in range(0, len(raw), CB)]
    assert list(h.tensors["t"].chunks) == expected
    header = tensor_header("t", "float32", (n,), CB)
    assert h.tensors["t"].digest == keccak(header + b"".join(expected))
    assert h.root == keccak(h.tensors["t"].digest)
    assert tensor_hash({"t": a}, chunk_bytes=CB, threads=4).root == h.root


def test_one_changed_value_changes_only_its_chunk() -> None:
    a = np.arange(100, dtype=np.float64)
    b = a.copy()
    b[50] += 1
    ca, cb = tensor_hash({"t": a}, chunk_bytes=CB).tensors["t"].chunks, tensor_hash(
        {"t": b}, chunk_bytes=CB).tensors["t"].chunks
    assert [i for i in range(len(ca)) if ca[i] != cb[i]] == [50 * 8 // CB]


def test_large_tensor_threads_agree() -> None:
    a = np.random.default_rng(1).random(3 * (1 << 18) + 7, dtype=np.float32)  # ~3 MiB: 4 chunks
    a[::1000] = -0.0
    assert tensor_hash({"t": a}, threads=1).root == tensor_hash({"t": a}, threads=3).root


def test_chunk_proof_verifies_and_tampering_fails() -> None:
    tensors = {"w": np.linspace(-1, 1, 100, dtype=np.float32), "b": np.arange(10, dtype=np.int64)}
    h = tensor_hash(tensors, chunk_bytes=CB)
    others = {n: d.digest for n, d in h.tensors.items() if n != "w"}
    n_chunks = len(h.tensors["w"].chunks)
    for i in range(n_chunks):
        data, digests, header = chunk_proof(tensors, "w", i, chunk_bytes=CB)
        assert verify_chunk(h.root, "w", header, digests, i, data, others)
        assert verify_chunk(h.hex, "w", header, digests, i, data, others)
        assert verify_chunk(h.hex[2:], "w", header, digests, i, data, others)
        assert np.array_equal(decode_chunk(header, data), tensors["w"][i * 16:(i + 1) * 16])
    data, digests, header = chunk_proof(tensors, "w", 2, chunk_bytes=CB)
    tampered = bytearray(data)
    tampered[5] ^= 1
    assert not verify_chunk(h.root, "w", header, digests, 2, bytes(tampered), others)
    assert not verify_chunk(h.root, "w", header, digests, 3, data, others)  # wrong index
    assert not verify_chunk(h.root, "w", header, digests, 2, data, {"b": b"\0" * 32})  # wrong other digests
    assert not verify_chunk(h.root, "w", header, digests, 2, data, {})  # a tensor left out
    assert not verify_chunk(h.root, "b", header, digests, 2, data, others)  # wrong name
    fake_header = tensor_header("w", "float32", (99,), CB)
    assert not verify_chunk(h.root, "w", fake_header, digests, 2, data, others)
    assert not verify_chunk(h.root, "w", b"not json", digests, 2, data, others)
    with pytest.raises(IndexError):
        chunk_proof(tensors, "w", n_chunks, chunk_bytes=CB)


def test_verify_chunk_rejects_non_canonical_bytes() -> None:
    """Bytes with -0.0 never come out of tensor_hash, even if someone committed their sha256."""
    t = {"t": np.array([-0.0, 1.0], np.float32)}
    h = tensor_hash(t, chunk_bytes=CB)
    raw = np.array([-0.0, 1.0], np.float32).tobytes()
    header = tensor_header("t", "float32", (2,), CB)
    forged = [hashlib.sha256(raw).digest()]
    forged_root = keccak(keccak(header + forged[0]))
    assert not verify_chunk(forged_root, "t", header, forged, 0, raw, {})
    data, digests, header = chunk_proof(t, "t", 0, chunk_bytes=CB)
    assert verify_chunk(h.root, "t", header, digests, 0, data, {})


def test_measure_hash_throughput_runs() -> None:
    assert measure_hash_throughput(4, repeat=1) > 0


# ---------------------------------------------------------------- manifests and result directories
def _manifest(**kw) -> ResultManifest:
    base: dict = {"spec_hash": "0x" + "11" * 32, "status": "ok", "result_hash": "0x" + "22" * 32,
                  "profile": "exact-f64", "device": "cpu", "torch_version": "2.13.0", "threads": 2,
                  "timing": {"wall_s": 1.0, "compute_s": 0.5, "queue_s": 0.1}}
    return ResultManifest(**{**base, **kw})


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = _manifest()
    assert ResultManifest.from_json(m.to_json()) == m
    assert m.write(tmp_path) == tmp_path / "manifest.json"
    assert ResultManifest.read(tmp_path) == m
    assert m.to_json()["version"] == 1 and json.loads(m.to_json_text()) == m.to_json()


def test_manifest_rejects_bad_fields() -> None:
    with pytest.raises(SpecError, match="unknown field"):
        ResultManifest.from_json(json.dumps({**_manifest().to_json(), "extra": 1}))
    with pytest.raises(SpecError, match="status"):
        _manifest(status="exploded")
    with pytest.raises(SpecError, match="result_hash"):
        _manifest(result_hash=None)
    assert _manifest(status="timeout", result_hash=None, error="killed after 600 s").status == "timeout"
    with pytest.raises(SpecError, match="JSON"):
        ResultManifest.from_json("{")


def _result_dir(tmp_path: Path, tensors: dict) -> Path:
    outputs = write_outputs(tmp_path, tensors)
    _manifest(result_hash=tensor_hash(tensors).hex, outputs=outputs).write(tmp_path)
    return tmp_path


def test_write_outputs_and_verify(tmp_path: Path) -> None:
    tensors = {"logits": np.arange(8, dtype=np.float32).reshape(2, 4), "loss": np.array(0.25, np.float32)}
    d = _result_dir(tmp_path, tensors)
    assert (d / "outputs.safetensors").read_bytes() == dump_tensors(tensors)
    m = ResultManifest.read(d)
    assert m.outputs["logits"] == {"dtype": "float32", "shape": [2, 4], "file": "outputs.safetensors",
                                   "digest": "0x" + tensor_hash(tensors).tensors["logits"].digest.hex()}
    assert verify_result_dir(d).hex == m.result_hash


def test_verify_result_dir_names_the_differing_tensor(tmp_path: Path) -> None:
    tensors = {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}
    d = _result_dir(tmp_path, tensors)
    (d / "outputs.safetensors").write_bytes(dump_tensors({**tensors, "b": np.full(4, 2, np.float32)}))
    with pytest.raises(ResultMismatchError, match="'b' digest") as err:
        verify_result_dir(d)
    assert err.value.tensor == "b"
    (d / "outputs.safetensors").write_bytes(dump_tensors({"a": tensors["a"]}))
    with pytest.raises(ResultMismatchError, match="'b' is missing"):
        verify_result_dir(d)


def test_verify_result_dir_checks_the_root(tmp_path: Path) -> None:
    d = _result_dir(tmp_path, {"a": np.zeros(4, np.float32)})
    m = ResultManifest.read(d).model_copy(update={"result_hash": "0x" + "33" * 32})  # manifests are frozen
    m.write(d)
    with pytest.raises(ResultMismatchError, match="result hash differs"):
        verify_result_dir(d)


def test_verify_result_dir_refuses_pickled_outputs(tmp_path: Path) -> None:
    import pickle

    d = _result_dir(tmp_path, {"a": np.zeros(4, np.float32)})
    (d / "outputs.safetensors").write_bytes(pickle.dumps({"a": [0.0] * 4}, protocol=2))
    with pytest.raises(SpecError, match="pickle"):
        verify_result_dir(d)
