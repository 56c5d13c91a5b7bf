"""Run jobs in a sandbox: a warm worker per determinism environment forks a fresh, limited child per job.

    with Sandbox(default_store()) as sandbox:
        manifest = sandbox.run(spec, Path("result"))    # never raises for a job's failure: see manifest.status

Workers (`node.sandbox._worker`) start lazily, import torch once, and are restarted when they die. The default
environment serves every profile but `pinned-f32`, whose worker starts with pinned CPU kernels
(`PINNED_ENV`), which must be set before torch is imported. The isolation applied inside each child is
described in `node.sandbox._limits`; what was applied is kept in the result dir as `sandbox.json` (the result
manifest's schema has no field for it). `run_in_process` is the unsandboxed baseline for benchmarks.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.sandbox._job import DEFAULT_EXECUTOR, JobOutcome, resolve_executor, run_job
from node.sandbox._proc import WorkerError, WorkerGoneError, WorkerProcess

if TYPE_CHECKING:
    from marketplace.blobs import BlobStore
    from marketplace.canonical import ResultManifest
    from marketplace.spec import JobSpec

PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
#: Seconds the caller waits beyond `wall_seconds` for the worker's answer before declaring the worker dead.
ANSWER_GRACE_S = 30.0
SANDBOX_RECORD = "sandbox.json"


def environment_for(spec: JobSpec) -> str:
    """Which worker environment serves this spec: "pinned" for pinned-f32, else "default"."""
    return "pinned" if spec.determinism == "pinned-f32" else "default"


class Sandbox:
    """Warm, forking workers that run jobs under limits. A context manager; `close()` stops the workers.

    `executor` ("module:function", default `node.runtime.executor:execute`) is what each child calls; tests and
    benchmarks may point it elsewhere. `workers_dir` holds worker logs and per-job scratch directories
    (default: a fresh temporary directory, removed by `close()`)."""

    def __init__(self, store: BlobStore, *, workers_dir: Path | None = None,
                 executor: str = DEFAULT_EXECUTOR) -> None:
        self.store = store
        self.executor = executor
        self._own_dir = workers_dir is None
        if workers_dir is None:
            import tempfile

            workers_dir = Path(tempfile.mkdtemp(prefix="agora-sandbox-"))
        self.workers_dir = Path(workers_dir)
        self.workers_dir.mkdir(parents=True, exist_ok=True)
        self._workers: dict[str, WorkerProcess] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Sandbox:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _worker(self, env_name: str) -> WorkerProcess:
        worker = self._workers.get(env_name)
        if worker is None:
            extra = PINNED_ENV if env_name == "pinned" else {}
            worker = WorkerProcess(env_name, self.executor, extra_env=extra, log_dir=self.workers_dir)
            self._workers[env_name] = worker
        return worker

    def warm(self, *env_names: str) -> None:
        """Start the named workers now (default: "default") instead of on their first job. Raises WorkerError."""
        with self._lock:
            for name in env_names or ("default",):
                self._worker(name).ensure_started()

    def run(self, spec: JobSpec, out_dir: Path) -> ResultManifest:
        """Run `spec` in a fresh sandboxed child; write outputs (when ok) and `manifest.json` into `out_dir`.

        Never raises for anything the job or the worker does: failures are the manifest's status
        ("timeout", "out-of-memory", "bad-input", "crash"). Raises only OSError if `out_dir` cannot be created."""
        t0 = time.monotonic()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            worker = self._worker(environment_for(spec))
            request = {"spec": spec.canonical_json().decode(), "store": str(Path(self.store.root).resolve()),
                       "out_dir": str(out_dir.resolve()), "wall_seconds": spec.limits.wall_seconds,
                       "workers_dir": str(self.workers_dir), "pinned": worker.env_name == "pinned"}
            try:
                reply = self._ask(worker, request, spec.limits.wall_seconds + ANSWER_GRACE_S)
            except WorkerError as err:
                worker.stop()  # restarted on the next job
                outcome = JobOutcome("crash", error=f"sandbox worker ({worker.env_name}): {err}")
                return _finish(spec, out_dir, outcome, {}, queue_s=time.monotonic() - t0, wall_s=0.0)
        try:
            outcome = JobOutcome(**reply["outcome"])
            queue_s, wall_s = max(0.0, float(reply["fork_at"]) - t0), float(reply["wall_s"])
        except (KeyError, TypeError, ValueError) as err:
            outcome, queue_s, wall_s = JobOutcome("crash", error=f"sandbox worker answered {err!r}"), 0.0, 0.0
        return _finish(spec, out_dir, outcome, reply.get("sandbox", {}), queue_s=queue_s, wall_s=wall_s)

    @staticmethod
    def _ask(worker: WorkerProcess, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send the job; if the worker turns out to be dead (it died between jobs), restart it and retry once.
        Raises WorkerError."""
        for attempt in (1, 2):
            worker.ensure_started()
            try:
                return worker.request(request, timeout=timeout)
            except WorkerGoneError:
                worker.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop every worker (EOF, then SIGKILL after a few seconds) and remove an owned workers_dir."""
        with self._lock:
            for worker in self._workers.values():
                worker.stop()
            self._workers.clear()
        if self._own_dir:
            import shutil

            shutil.rmtree(self.workers_dir, ignore_errors=True)


def run_in_process(spec: JobSpec, store: BlobStore, out_dir: Path, *,
                   executor: str = DEFAULT_EXECUTOR) -> ResultManifest:
    """Run `spec` in this process with no isolation at all (the benchmark baseline); same outputs and manifest
    as `Sandbox.run`. Raises ImportError when the executor (torch) is missing, OSError for `out_dir`."""
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = run_job(spec, store, out_dir, resolve_executor(executor))
    record = {"network": "not isolated: in-process run", "limits": {}}
    return _finish(spec, out_dir, outcome, record, queue_s=0.0, wall_s=time.monotonic() - t0)


def _finish(spec: JobSpec, out_dir: Path, outcome: JobOutcome, record: dict[str, Any], *,
            queue_s: float, wall_s: float) -> ResultManifest:
    """Write the manifest (always) and the sandbox record; drop stale outputs of a failed job."""
    from marketplace.blobs import BlobStore
    from marketplace.canonical import ResultManifest
    from marketplace.results import OUTPUTS_FILE

    if outcome.status != "ok":
        (out_dir / OUTPUTS_FILE).unlink(missing_ok=True)
    manifest = ResultManifest(
        spec_hash="0x" + spec.spec_hash().hex(), status=outcome.status,  # type: ignore[arg-type]
        error=outcome.error, result_hash=outcome.result_hash, outputs=outcome.outputs, profile=spec.determinism,
        device=outcome.device or "", torch_version=outcome.torch_version, threads=outcome.threads,
        timing={"wall_s": round(wall_s, 6), "compute_s": round(outcome.compute_s or 0.0, 6),
                "queue_s": round(queue_s, 6)},
    )
    manifest.write(out_dir)
    record = {**record, "execution": outcome.notes} if outcome.notes else record
    (out_dir / SANDBOX_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return manifest


__all__ = ["PINNED_ENV", "Sandbox", "WorkerError", "environment_for", "run_in_process"]
