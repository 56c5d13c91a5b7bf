"""The sandbox: typed statuses for every way a job can end, isolation, parity with in-process runs, CLI.

Each test builds its own specs and blobs in a temporary store. Two warm sandboxes are shared per module: one
with the real executor, one with test executors (`_hooks.py`, written to tmp and put on PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.integration  # starts sandbox worker processes and `agora` subprocesses
np = pytest.importorskip("numpy")

from marketplace.blobs import BlobStore
from marketplace.spec import JobSpec, parse_spec
from marketplace.tensors import dump_tensors
from node.sandbox import Sandbox, run_in_process

HOOKS = '''
import os
from dataclasses import dataclass

import numpy as np


@dataclass
class Result:
    outputs: dict
    device: str = "cpu"
    torch_version: str = "test"
    compute_s: float = 0.0
    threads: int = 1


def environment(spec, inputs, **kw):
    env = dict(os.environ)
    flags = [int("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in env), int(env.get("HOME") == os.getcwd()),
             int(os.listdir(".") == []), len(env), int(env.get("HF_HUB_OFFLINE") == "1")]
    return Result({"flags": np.array(flags, dtype=np.int64)})


def abort(spec, inputs, **kw):
    os.abort()
'''


def _put(store: BlobStore, data: bytes) -> str:
    return store.put_bytes(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> BlobStore:
    return BlobStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def sandbox(store: BlobStore) -> Iterator[Sandbox]:
    with Sandbox(store) as sb:
        yield sb


@pytest.fixture(scope="module")
def hooked(store: BlobStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox whose children call test executors; its worker inherits TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    hooks_dir = tmp_path_factory.mktemp("hooks")
    (hooks_dir / "agora_test_hooks.py").write_text(textwrap.dedent(HOOKS))
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks_dir), saved["PYTHONPATH"]]))
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with Sandbox(store, executor="agora_test_hooks:environment") as sb:
            sb.warm()
            yield sb
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _spec(store: BlobStore, *, kind: str = "inference", rows: int = 8, hidden: list[int] | None = None,
          **extra: Any) -> JobSpec:
    rng = np.random.default_rng(7)
    data = {"inputs": _put(store, dump_tensors({"x": rng.standard_normal((rows, 16)).astype(np.float32)}))}
    if kind == "train":
        data["labels"] = _put(store, dump_tensors({"y": rng.integers(0, 4, rows).astype(np.int64)}))
    params = {"in_features": 16, "hidden": hidden or [32], "out_features": 4}
    return parse_spec({"kind": kind, "model": {"arch": "mlp@1", "params": params}, "data": data, **extra})


def test_ok_matches_in_process(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    spec = _spec(store)
    boxed = sandbox.run(spec, tmp_path / "boxed")
    plain = run_in_process(spec, store, tmp_path / "plain")
    assert boxed.status == "ok", boxed.error
    assert boxed.result_hash == plain.result_hash
    assert (tmp_path / "boxed" / "outputs.safetensors").exists()
    assert boxed.timing["wall_s"] > 0 and boxed.timing["queue_s"] >= 0
    record = json.loads((tmp_path / "boxed" / "sandbox.json").read_text())
    assert record["network"] == ("isolated" if os.geteuid() == 0 else record["network"])
    assert record["limits"]["fsize_mb"] == spec.limits.output_mb


def test_pinned_profile_runs_pinned_kernels(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    manifest = sandbox.run(_spec(store, determinism="pinned-f32"), tmp_path)
    assert manifest.status == "ok", manifest.error
    execution = json.loads((tmp_path / "sandbox.json").read_text())["execution"]
    assert execution["cpu_capability"].upper() == "DEFAULT" and not execution["warnings"]


def test_out_of_memory(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    spec = _spec(store, hidden=[8192] * 8, limits={"memory_mb": 256})
    manifest = sandbox.run(spec, tmp_path)
    assert manifest.status == "out-of-memory", manifest.error
    assert not (tmp_path / "outputs.safetensors").exists()


def test_timeout_returns_promptly(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    spec = _spec(store, kind="train", rows=256, hidden=[512, 512], determinism="exact-f64",
                 training={"lr": 0.01, "batch_size": 8, "epochs": 10_000}, limits={"wall_seconds": 1.0})
    t0 = time.monotonic()
    manifest = sandbox.run(spec, tmp_path)
    assert manifest.status == "timeout", manifest.error
    assert time.monotonic() - t0 < 6.0
    assert manifest.timing["wall_s"] < 3.0


def test_pickle_payload_is_bad_input(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    good = _spec(store)
    evil_id = _put(store, pickle.dumps({"x": Evil()}))
    spec = good.model_copy(update={"data": {"inputs": evil_id}})
    manifest = sandbox.run(spec, tmp_path / "out")
    assert manifest.status == "bad-input", manifest.error
    assert not marker.exists()


def test_corrupt_blob_is_bad_input(sandbox: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    payload = dump_tensors({"x": np.full((4, 16), 3.0, dtype=np.float32)})
    blob_id = _put(store, payload)
    files = [p for p in Path(store.root).rglob("*") if p.is_file() and p.read_bytes() == payload]
    assert files, "could not find the stored blob on disk"
    for path in files:
        path.chmod(0o644)
        path.write_bytes(payload[:-4] + b"\0\0\0\1")
    spec = _spec(store).model_copy(update={"data": {"inputs": blob_id}})
    manifest = sandbox.run(spec, tmp_path)
    assert manifest.status == "bad-input", manifest.error


def test_environment_is_scrubbed(hooked: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    from marketplace.tensors import load_tensors

    manifest = hooked.run(_spec(store), tmp_path)
    assert manifest.status == "ok", manifest.error
    flags = load_tensors((tmp_path / "outputs.safetensors").read_bytes(), what="outputs")["flags"].tolist()
    leaked, home_is_scratch, scratch_empty, n_env, offline = flags
    assert leaked == 0, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD reached the job"
    assert home_is_scratch and scratch_empty and offline
    assert n_env < 15


def test_crash_and_worker_restart(hooked: Sandbox, store: BlobStore, tmp_path: Path) -> None:
    crash = Sandbox(store, executor="agora_test_hooks:abort")
    try:
        manifest = crash.run(_spec(store), tmp_path / "a")
        assert manifest.status == "crash" and "SIGABRT" in (manifest.error or ""), manifest.error
        assert (tmp_path / "a" / "manifest.json").exists()
    finally:
        crash.close()
    proc = hooked._workers["default"]._proc
    proc.kill()  # the worker dies between jobs: the next job restarts it
    proc.wait()
    assert hooked.run(_spec(store), tmp_path / "b").status == "ok"


def _agora(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marketplace.cli", *args], check=False, capture_output=True, text=True,
                          timeout=120)


def test_cli_run_and_verify(store: BlobStore, tmp_path: Path) -> None:
    spec = _spec(store, kind="train", rows=32, training={"lr": 0.05, "batch_size": 8, "epochs": 2})
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.canonical_json().decode())
    out = tmp_path / "result"
    run = _agora("run", str(spec_path), "--store", str(store.root), "--out", str(out))
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["result_hash"] in run.stderr + run.stdout
    ok = _agora("verify", str(spec_path), str(out), "--store", str(store.root))
    assert ok.returncode == 0 and "match" in ok.stderr + ok.stdout, ok.stderr
    outputs = out / "outputs.safetensors"
    raw = bytearray(outputs.read_bytes())
    raw[-1] ^= 1
    outputs.write_bytes(bytes(raw))
    bad = _agora("verify", str(spec_path), str(out), "--store", str(store.root))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
