#!/usr/bin/env python
"""Runtime benchmark: the sandbox against running the same job in-process, hashing speed, profile costs.

    python scripts/bench_runtime.py --out bench-runtime.json [--runs 30] [--long-seconds 30]

(a) tiny job (mlp inference on 8 rows), N runs each way -> overhead ms per job (target <= 60 ms);
(b) a training job sized to take ~`--long-seconds` in-process -> overhead % (target <= 3 %);
(c) canonical hash throughput on a 256 MiB float32 tensor (target >= 1 GB/s);
(d) each determinism profile's compute time against plain float32 (`none`), one inference and one training
    job, measured in the sandbox (the pinned-f32 worker runs the pinned kernels).
Specs and blobs are built here, from seeded numpy data, in a temporary store. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from marketplace.blobs import BlobStore
from marketplace.spec import JobSpec, parse_spec
from marketplace.tensors import dump_tensors
from node.sandbox import Sandbox, run_in_process

TARGETS = {"tiny_overhead_ms": 60.0, "long_job_overhead_pct": 3.0, "hash_gb_per_s": 1.0}


def mlp_spec(store: BlobStore, *, kind: str, rows: int, features: int, hidden: list[int], classes: int = 10,
             profile: str = "none", training: dict[str, Any] | None = None) -> JobSpec:
    rng = np.random.default_rng(1234)
    data = {"inputs": store.put_bytes(dump_tensors({"x": rng.standard_normal((rows, features)).astype(np.float32)}))}
    if kind != "inference":
        data["labels"] = store.put_bytes(dump_tensors({"y": rng.integers(0, classes, rows).astype(np.int64)}))
    params = {"in_features": features, "hidden": hidden, "out_features": classes}
    doc: dict[str, Any] = {"kind": kind, "model": {"arch": "mlp@1", "params": params}, "data": data,
                           "determinism": profile, "limits": {"wall_seconds": 3600, "memory_mb": 8192}}
    if training is not None:
        doc["training"] = training
    return parse_spec(doc)


def train_spec(store: BlobStore, steps: int, profile: str = "none") -> JobSpec:
    return mlp_spec(store, kind="train", rows=4096, features=256, hidden=[512, 512], profile=profile,
                    training={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 64, "steps": steps,
                              "epochs": -(-steps // 64)})  # 4096 rows / 64 = 64 steps per epoch


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def ok(manifest: Any) -> Any:
    if manifest.status != "ok":
        raise SystemExit(f"benchmark job failed: {manifest.status}: {manifest.error}")
    return manifest


def bench_tiny(sandbox: Sandbox, store: BlobStore, work: Path, runs: int) -> dict[str, Any]:
    spec = mlp_spec(store, kind="inference", rows=8, features=32, hidden=[64])
    ok(sandbox.run(spec, work / "warm"))  # start the worker outside the measurement
    ok(run_in_process(spec, store, work / "warm-in"))
    boxed, plain, forked = [], [], []
    for i in range(runs):  # interleaved, so drift hits both sides alike
        dt, m = timed(lambda i=i: ok(sandbox.run(spec, work / f"tiny-{i}")))
        boxed.append(dt)
        forked.append(m.timing["wall_s"])
        plain.append(timed(lambda i=i: ok(run_in_process(spec, store, work / f"tiny-in-{i}")))[0])
    med_box, med_plain = statistics.median(boxed), statistics.median(plain)
    return {"runs": runs, "sandbox_ms": med_box * 1e3, "in_process_ms": med_plain * 1e3,
            "fork_wall_ms": statistics.median(forked) * 1e3, "overhead_ms": (med_box - med_plain) * 1e3,
            "sandbox_p90_ms": sorted(boxed)[int(0.9 * (runs - 1))] * 1e3}


def bench_long(sandbox: Sandbox, store: BlobStore, work: Path, seconds: float, repeats: int = 3) -> dict[str, Any]:
    probe_steps = 200
    probe = train_spec(store, probe_steps)
    run_in_process(probe, store, work / "probe-warm")
    dt, _ = timed(lambda: ok(run_in_process(probe, store, work / "probe")))
    steps = max(probe_steps, int(seconds / dt * probe_steps))
    spec = train_spec(store, steps)
    plain, boxed, plain_compute, boxed_compute, hashes = [], [], [], [], set()
    for i in range(repeats):  # interleaved, alternating which side goes first, so drift hits both alike
        sides = [("in", plain, plain_compute, lambda i=i: ok(run_in_process(spec, store, work / f"long-in-{i}"))),
                 ("box", boxed, boxed_compute, lambda i=i: ok(sandbox.run(spec, work / f"long-box-{i}")))]
        for _name, walls, computes, fn in (sides if i % 2 == 0 else sides[::-1]):
            dt, m = timed(fn)
            walls.append(dt)
            computes.append(m.timing["compute_s"])
            hashes.add(m.result_hash)
    t_plain, t_box = statistics.median(plain), statistics.median(boxed)
    return {"steps": steps, "repeats": repeats, "in_process_s": t_plain, "sandbox_s": t_box,
            "in_process_runs_s": plain, "sandbox_runs_s": boxed,
            "in_process_compute_s": statistics.median(plain_compute),
            "sandbox_compute_s": statistics.median(boxed_compute),
            "overhead_pct": (t_box - t_plain) / t_plain * 100, "same_result": len(hashes) == 1}


def bench_hash() -> dict[str, Any]:
    from marketplace import tensorhash

    if hasattr(tensorhash, "measure_hash_throughput"):
        res = tensorhash.measure_hash_throughput()
        gbps = float(res.get("gb_per_s", res.get("gbps", 0.0))) if isinstance(res, dict) else float(res)
        return {"method": "marketplace.tensorhash.measure_hash_throughput", "gb_per_s": gbps}
    tensor = np.random.default_rng(0).standard_normal(64 << 20, dtype=np.float32)  # 256 MiB
    tensorhash.tensor_hash({"t": tensor})
    best = min(timed(lambda: tensorhash.tensor_hash({"t": tensor}))[0] for _ in range(3))
    return {"method": "tensor_hash on 256 MiB float32, best of 3", "gb_per_s": tensor.nbytes / best / 1e9}


def bench_profiles(sandbox: Sandbox, store: BlobStore, work: Path) -> dict[str, Any]:
    jobs = {
        "inference": (lambda p: mlp_spec(store, kind="inference", rows=8192, features=256, hidden=[1024, 1024],
                                         profile=p), ["none", "exact-f64", "pinned-f32", "label"]),
        "train": (lambda p: train_spec(store, 300, profile=p), ["none", "exact-f64", "pinned-f32"]),
    }
    out: dict[str, Any] = {}
    for kind, (make, profiles) in jobs.items():
        secs = {}
        for p in profiles:
            ok(sandbox.run(make(p), work / f"prof-warm-{kind}-{p}"))
            secs[p] = min(ok(sandbox.run(make(p), work / f"prof-{kind}-{p}-{i}")).timing["compute_s"] for i in range(2))
        out[kind] = {p: {"compute_s": s, "x_none": s / secs["none"]} for p, s in secs.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--runs", type=int, default=30, help="tiny-job runs each way (default 30)")
    ap.add_argument("--long-seconds", type=float, default=30.0, help="in-process length of the long job")
    ap.add_argument("--long-repeats", type=int, default=3, help="long-job runs each way, interleaved (median)")
    ap.add_argument("--skip-profiles", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agora-bench-") as tmp:
        work = Path(tmp)
        store = BlobStore(work / "store")
        with Sandbox(store, workers_dir=work / "workers") as sandbox:
            tiny = bench_tiny(sandbox, store, work, args.runs)
            long = bench_long(sandbox, store, work, args.long_seconds, args.long_repeats)
            profiles = {} if args.skip_profiles else bench_profiles(sandbox, store, work)
        hashing = bench_hash()
    summary = {"tiny_overhead_ms": round(tiny["overhead_ms"], 2),
               "long_job_overhead_pct": round(long["overhead_pct"], 3),
               "hash_gb_per_s": round(hashing["gb_per_s"], 3)}
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "tiny": tiny, "long": long, "hash": hashing, "profiles": profiles, "summary": summary,
              "targets": TARGETS}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'measure':<40}{'value':>12}  {'target':>10}  detail")
    print(f"{'tiny job overhead (ms/job)':<40}{summary['tiny_overhead_ms']:>12.1f}  {'<= 60':>10}  "
          f"sandbox {tiny['sandbox_ms']:.1f} ms vs in-process {tiny['in_process_ms']:.1f} ms (median of {args.runs})")
    print(f"{'long job overhead (%)':<40}{summary['long_job_overhead_pct']:>12.2f}  {'<= 3':>10}  "
          f"{long['steps']} steps, median of {long['repeats']}: sandbox {long['sandbox_s']:.2f} s vs in-process "
          f"{long['in_process_s']:.2f} s "
          f"(compute {long['sandbox_compute_s']:.2f} vs {long['in_process_compute_s']:.2f} s), "
          f"same hash: {long['same_result']}")
    print(f"{'canonical hash (GB/s)':<40}{summary['hash_gb_per_s']:>12.2f}  {'>= 1':>10}  {hashing['method']}")
    for kind, row in profiles.items():
        for p, v in row.items():
            print(f"{f'profile {kind} {p} (x none)':<40}{v['x_none']:>12.2f}  {'':>10}  compute {v['compute_s']:.3f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
