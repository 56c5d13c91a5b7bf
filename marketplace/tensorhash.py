"""Tensor hashing: the 32-byte result hash of a set of tensors, which providers commit and reveal on-chain.

Encoding. A tensor's canonical bytes are its values, C order, little-endian, with every float -0.0 mapped to +0.0
and every NaN to the one quiet NaN of its width (so values that compare equal, or are all "not a number", hash
equal). The bytes are cut into `chunk_bytes` slices (the last may be shorter) and

    header        = RFC 8785 JSON {"chunk_bytes", "dtype" (numpy name), "name", "shape"} (sorted, no spaces)
    chunk digest  = sha256(slice)
    tensor digest = keccak256(header || chunk digest 0 || chunk digest 1 || ...)
    root          = keccak256(tensor digest of each name, in sorted name order)

sha256 over 1 MiB slices runs on a thread pool (hashlib releases the GIL); keccak only ever sees headers and
digests. One chunk is provable on its own: `chunk_proof` gives the slice, the tensor's chunk digests and header,
and `verify_chunk` checks them against the root with the other tensors' digests, which is what a dispute needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from eth_utils import keccak

from marketplace.errors import SpecError
from marketplace.models import canonical_json

DEFAULT_CHUNK_BYTES = 1 << 20
_HASHABLE = {"bool", "uint8", "int8", "uint16", "int16", "float16", "uint32", "int32", "float32",
             "uint64", "int64", "float64"}
#: The canonical quiet NaN and the sign bit, per float width, as unsigned bit patterns.
_CANON_NAN = {2: (np.uint16, 0x7E00, 0x8000), 4: (np.uint32, 0x7FC00000, 0x80000000),
              8: (np.uint64, 0x7FF8000000000000, 0x8000000000000000)}


@dataclass(frozen=True)
class TensorDigest:
    """One tensor's part of the hash: its dtype, shape, keccak digest and the sha256 of each chunk."""

    dtype: str
    shape: tuple[int, ...]
    digest: bytes
    chunks: tuple[bytes, ...]


@dataclass(frozen=True)
class TensorHash:
    """`root` is the 32-byte result hash committed on-chain; `tensors` the per-tensor digests."""

    root: bytes
    tensors: dict[str, TensorDigest]
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    @property
    def hex(self) -> str:
        """The root as 0x-prefixed hex (the form manifests and the chain use)."""
        return "0x" + self.root.hex()


def _prepare(a: np.ndarray, name: str = "tensor") -> np.ndarray:
    """Little-endian C-contiguous view (a copy only when the array is not already so). Raises SpecError."""
    a = np.asarray(a)
    if a.dtype.name not in _HASHABLE:
        raise SpecError(f"cannot hash tensor {name!r} of dtype {a.dtype} (supported: {', '.join(sorted(_HASHABLE))})")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    return a if a.flags.c_contiguous else a.copy(order="C")


def _canon_floats(chunk: np.ndarray) -> np.ndarray:
    """`chunk` (little-endian floats) with -0 -> +0 and NaNs -> the canonical NaN; the same object when already
    canonical (two read-only scans, no copy)."""
    utype, nan_bits, sign = _CANON_NAN[chunk.dtype.itemsize]
    bits = chunk.view(np.dtype(utype).newbyteorder("<"))
    neg_zero = bits == sign
    nans = np.isnan(chunk)
    if not (neg_zero.any() or (nans.any() and (bits[nans] != nan_bits).any())):
        return chunk
    fixed = bits.copy()
    fixed[neg_zero] = 0
    fixed[nans] = nan_bits
    return fixed.view(chunk.dtype)


def tensor_bytes(a: np.ndarray) -> memoryview:
    """The canonical byte encoding of `a` (see module docstring). No copy when `a` is already little-endian,
    contiguous and free of -0.0 and non-canonical NaNs. Raises SpecError for unsupported dtypes."""
    flat = _prepare(a).reshape(-1)
    if flat.dtype.kind == "f":
        flat = _canon_floats(flat)
    return memoryview(flat).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer


def tensor_header(name: str, dtype: str, shape: tuple[int, ...] | list[int], chunk_bytes: int) -> bytes:
    """The JSON header that starts a tensor's digest, RFC 8785 (`canonical_json`; for ASCII names the same bytes
    as sorted compact JSON)."""
    return canonical_json({"chunk_bytes": chunk_bytes, "dtype": dtype, "name": name, "shape": list(shape)})


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if not isinstance(chunk_bytes, int) or chunk_bytes < 64 or chunk_bytes % 8:
        raise ValueError(f"chunk_bytes must be a multiple of 8 and >= 64, got {chunk_bytes!r}")


def _chunk_digest(a: np.ndarray, start: int, stop: int) -> bytes:
    """sha256 of canonical bytes [start, stop) of the flat little-endian array `a` (runs in a worker thread)."""
    raw = memoryview(a).cast("B")[start:stop]  # type: ignore[arg-type]
    if a.dtype.kind == "f":
        part = _canon_floats(np.frombuffer(raw, dtype=a.dtype))
        raw = memoryview(part).cast("B")  # type: ignore[arg-type]
    return hashlib.sha256(raw).digest()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tensor_hash(tensors: Mapping[str, np.ndarray], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   threads: int | None = None) -> TensorHash:
    """Hash a dict of tensors (see module docstring). `threads` defaults to the CPUs this process may use.
    Raises SpecError for unsupported dtypes or bad names, ValueError for a bad `chunk_bytes`."""
    _check_chunk_bytes(chunk_bytes)
    prepared: dict[str, np.ndarray] = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"bad tensor name {name!r}")
        prepared[name] = _prepare(a, name)
    jobs = [(name, a.reshape(-1), s, min(s + chunk_bytes, a.nbytes))
            for name, a in prepared.items() for s in range(0, a.nbytes, chunk_bytes)]
    n_threads = max(1, min(threads or _cpus(), len(jobs)))
    if n_threads == 1:
        digests = [_chunk_digest(a, s, e) for _, a, s, e in jobs]
    else:
        with ThreadPoolExecutor(n_threads, thread_name_prefix="canonical-hash") as pool:
            digests = list(pool.map(lambda j: _chunk_digest(j[1], j[2], j[3]), jobs))
    per_tensor: dict[str, list[bytes]] = {name: [] for name in prepared}
    for (name, *_), d in zip(jobs, digests, strict=True):
        per_tensor[name].append(d)
    out: dict[str, TensorDigest] = {}
    for name, a in prepared.items():
        header = tensor_header(name, a.dtype.name, a.shape, chunk_bytes)
        chunks = tuple(per_tensor[name])
        out[name] = TensorDigest(a.dtype.name, tuple(a.shape), keccak(header + b"".join(chunks)), chunks)
    root = keccak(b"".join(out[n].digest for n in sorted(out)))
    return TensorHash(root, out, chunk_bytes)


def chunk_proof(tensors: Mapping[str, np.ndarray], name: str, index: int, *,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[bytes, list[bytes], bytes]:
    """What shows chunk `index` of tensor `name` on its own: (its canonical bytes, the tensor's chunk digests,
    the tensor header). The other tensors' digests come from `tensor_hash(...).tensors`.
    Raises KeyError (no such tensor), IndexError (no such chunk), SpecError."""
    h = tensor_hash({name: tensors[name]}, chunk_bytes=chunk_bytes)
    td = h.tensors[name]
    if not 0 <= index < len(td.chunks):
        raise IndexError(f"tensor {name!r} has {len(td.chunks)} chunks, no chunk {index}")
    data = bytes(tensor_bytes(tensors[name])[index * chunk_bytes:(index + 1) * chunk_bytes])
    return data, list(td.chunks), tensor_header(name, td.dtype, td.shape, chunk_bytes)


def decode_chunk(header: bytes, data: bytes) -> np.ndarray:
    """The values in a chunk's bytes (flat), given its tensor header. Raises ValueError for a bad header."""
    return np.frombuffer(data, dtype=np.dtype(json.loads(header)["dtype"]).newbyteorder("<"))


def verify_chunk(root: str | bytes, name: str, header: bytes, chunk_digests: list[bytes], index: int,
                 chunk_bytes_data: bytes, other_tensor_digests: Mapping[str, bytes]) -> bool:
    """Whether `chunk_bytes_data` is chunk `index` of tensor `name` under `root` (bytes or hex, 0x optional):
    the header describes `name` and fits the number and sizes of chunks, the data is canonical and hashes to
    its digest, and the tensor digest with `other_tensor_digests` gives the root. Never raises for bad input."""
    try:
        want = bytes.fromhex(root.removeprefix("0x")) if isinstance(root, str) else bytes(root)
        meta = json.loads(header)
        if header != tensor_header(meta["name"], meta["dtype"], meta["shape"], meta["chunk_bytes"]):
            return False
        if meta["name"] != name or name in other_tensor_digests or meta["dtype"] not in _HASHABLE:
            return False
        dtype, cb = np.dtype(meta["dtype"]).newbyteorder("<"), int(meta["chunk_bytes"])
        nbytes = int(np.prod(meta["shape"], dtype=np.int64)) * dtype.itemsize
        if len(chunk_digests) != -(-nbytes // cb) or not 0 <= index < len(chunk_digests):
            return False
        if len(chunk_bytes_data) != min(cb, nbytes - index * cb):
            return False
        if dtype.kind == "f":
            values = np.frombuffer(chunk_bytes_data, dtype=dtype)
            if _canon_floats(values) is not values:
                return False
        if hashlib.sha256(chunk_bytes_data).digest() != chunk_digests[index]:
            return False
        digests = dict(other_tensor_digests)
        digests[name] = keccak(header + b"".join(chunk_digests))
        return keccak(b"".join(digests[n] for n in sorted(digests))) == want
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def measure_hash_throughput(mib: int = 256, *, threads: int | None = None, repeat: int = 3) -> float:
    """Best-of-`repeat` canonical hashing speed of one `mib`-MiB float32 tensor, in GB/s (1e9 bytes / s)."""
    import time

    a = np.random.default_rng(0).random(mib * (1 << 20) // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        tensor_hash({"t": a}, threads=threads)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


__all__ = ["TensorDigest", "TensorHash", "chunk_proof", "decode_chunk", "measure_hash_throughput", "tensor_bytes",
           "tensor_hash", "tensor_header", "verify_chunk"]
