"""The warm sandbox worker: `python -m node.sandbox._worker EXECUTOR`, started and fed by `node.sandbox.Sandbox`.

It imports torch and the executor once, answers `{"ready": ...}`, then reads one JSON request per line on
stdin and answers one JSON line on the (private) protocol stream. Per job it forks a fresh child, which
  - starts a new session (its own process group) and dies with the worker (PR_SET_PDEATHSIG),
  - writes stdout/stderr to a log, runs in an empty scratch directory with a minimal environment,
  - enters a new network namespace when root (`unshare(CLONE_NEWNET)`), sets resource limits,
  - reads, parses and runs the job (`node.sandbox._job.run_job`) and writes its outcome to a file.
The worker waits with a wall-clock timeout (SIGKILL to the child's process group), maps the end to a status,
removes the scratch directory and answers. The worker itself never runs torch code, so no OpenMP pool exists
when it forks.
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from node.sandbox._job import JobOutcome, is_oom_text, resolve_executor, run_job, tail
from node.sandbox._limits import apply_limits, die_with_parent, isolate_network, minimal_env

_EXIT_OK, _EXIT_FAILED = 0, 1


def _child(req: dict[str, Any], execute: Any, ctl: Path, proto_fds: tuple[int, ...], done_fd: int) -> int:
    """Runs in the forked child; returns the exit code. Writes `ctl/outcome.json` on every handled end, then
    one byte to `done_fd` (so the worker can answer without waiting for the address space to be torn down)."""
    os.setsid()
    die_with_parent()
    log = os.open(ctl / "job.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in (*proto_fds, log, null):
        try:
            os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises EFBIG instead of killing us

    from marketplace.blobs import BlobStore
    from marketplace.spec import parse_spec

    spec = parse_spec(json.loads(req["spec"]))
    scratch = ctl / "scratch"
    info: dict[str, Any] = {"network": isolate_network()}
    os.chdir(scratch)
    env = minimal_env(scratch)
    os.environ.clear()
    os.environ.update(env)
    info["limits"] = apply_limits(spec.limits)
    (ctl / "sandbox.json").write_text(json.dumps(info))  # kept even if the job dies by a signal
    kwargs = {"require_pinned": True} if req.get("pinned") and spec.determinism == "pinned-f32" else {}
    outcome = run_job(spec, BlobStore(req["store"]), Path(req["out_dir"]), execute, **kwargs)
    (ctl / "outcome.json").write_text(json.dumps(outcome.to_dict()))
    code = _EXIT_OK if outcome.status == "ok" else _EXIT_FAILED
    os.write(done_fd, bytes([code]))
    return code


_EXITING: list[int] = []  # children that said "done" and are exiting; reaped before the next fork


def _reap_exiting(*, block: bool) -> None:
    """Sweep the process groups of children that said done and reap those that have exited (all, if `block`)."""
    for pid in list(_EXITING):
        _kill_group(pid)
        if os.waitpid(pid, 0 if block else os.WNOHANG)[0] == pid:
            _EXITING.remove(pid)


def _kill_group(pid: int) -> None:
    try:  # the child (a zombie now, or still running) keeps its group id reserved: sweep the whole group
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(pid: int, done_fd: int, timeout: float) -> tuple[int | None, bool]:
    """Wait up to `timeout` s for the child to say done or to die; on timeout SIGKILL its process group.
    Returns (wait status, or None after a clean "done"; timed_out)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([done_fd, pidfd], [], [], max(timeout, 0.0))
        if done_fd in ready and os.read(done_fd, 1):
            _EXITING.append(pid)
            return None, False
    finally:
        os.close(pidfd)
    _kill_group(pid)
    _, status = os.waitpid(pid, 0)
    return status, not ready


def _ending(status: int | None, timed_out: bool, ctl: Path, wall_seconds: float) -> tuple[JobOutcome, dict[str, Any]]:
    """Turn how the child ended into an outcome (plus the sandbox record the child left, if any)."""
    log = ""
    if (ctl / "job.log").exists():
        log = (ctl / "job.log").read_bytes()[-8192:].decode(errors="replace")
    record, sandbox = _read_json(ctl / "outcome.json"), _read_json(ctl / "sandbox.json")
    outcome = _outcome(status, timed_out, record, log, wall_seconds)
    return outcome, sandbox


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _outcome(status: int | None, timed_out: bool, record: dict[str, Any], log: str, wall_seconds: float
             ) -> JobOutcome:
    if timed_out:
        return JobOutcome("timeout", error=f"exceeded limits.wall_seconds ({wall_seconds:g} s)")
    if status is None:  # the child said done: its outcome file is the answer
        return JobOutcome(**record) if record else JobOutcome("crash", error="job said done but left no outcome")
    if record and os.WIFEXITED(status) and os.WEXITSTATUS(status) in (_EXIT_OK, _EXIT_FAILED):
        return JobOutcome(**record)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return JobOutcome("timeout", error="exceeded the CPU-time limit derived from limits.wall_seconds")
        if sig == signal.SIGKILL or is_oom_text(log):
            return JobOutcome("out-of-memory", error=f"killed by {name} (out of memory)")
        return JobOutcome("crash", error=tail(f"killed by {name}\n{log}"))
    code = os.WEXITSTATUS(status)
    if is_oom_text(log):
        return JobOutcome("out-of-memory", error=f"exited with code {code} (out of memory)")
    return JobOutcome("crash", error=tail(f"exited with code {code}\n{log}"))


def serve(req: dict[str, Any], execute: Any, proto_fds: tuple[int, ...]) -> dict[str, Any]:
    """Run one job request in a forked child and describe how it ended."""
    ctl = Path(tempfile.mkdtemp(prefix="job-", dir=req.get("workers_dir")))
    (ctl / "scratch").mkdir(mode=0o700)
    wall = float(req["wall_seconds"])
    _reap_exiting(block=False)
    done_r, done_w = os.pipe()
    try:
        fork_at = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.close(done_r)
                code = _child(req, execute, ctl, proto_fds, done_w)
            except BaseException as exc:  # noqa: BLE001 - anything unhandled is a crash, told via the log
                import traceback

                traceback.print_exception(exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(done_w)
        done_w = -1
        status, timed_out = _wait(pid, done_r, wall)
        wall_s = time.monotonic() - fork_at
        outcome, sandbox = _ending(status, timed_out, ctl, wall)
        return {"outcome": outcome.to_dict(), "sandbox": sandbox, "fork_at": fork_at, "wall_s": wall_s}
    finally:
        for fd in (done_r, done_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(ctl, ignore_errors=True)


def _warm_torch() -> None:
    """Run torch's one-time lazy initialisation (dispatch, kernels, BLAS) here, once, instead of in every child.
    Single-threaded on purpose: an OpenMP thread pool created before fork() would hang the children."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in (torch.float32, torch.float64):
            layer = torch.nn.Linear(8, 4).to(dtype)
            x = torch.linspace(-1, 1, 32, dtype=dtype).reshape(4, 8)
            loss = torch.nn.functional.cross_entropy(torch.relu(layer(x)), torch.zeros(4, dtype=torch.long))
            loss.backward()
            torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9).step()
    finally:
        torch.set_num_threads(threads)


def _serve_safely(line: str, execute: Any, proto_fds: tuple[int, ...]) -> dict[str, Any]:
    """`serve`, with any failure of the worker's own (bad request, no disk for scratch) told as a crash."""
    try:
        return serve(json.loads(line), execute, proto_fds)
    except Exception as exc:  # noqa: BLE001 - the worker must keep answering
        outcome = JobOutcome("crash", error=f"sandbox worker: {type(exc).__name__}: {exc}")
        return {"outcome": outcome.to_dict(), "sandbox": {}, "fork_at": time.monotonic(), "wall_s": 0.0}


def main(argv: list[str]) -> int:
    proto: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (torch warnings) go to stderr, never into the protocol
    sys.stdout = sys.stderr
    proto_fds = (0, proto.fileno())

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        execute = resolve_executor(argv[0])
        import torch

        import marketplace.blobs
        import marketplace.canonical
        import marketplace.spec
        import marketplace.tensors  # noqa: F401
    except BaseException as exc:  # noqa: BLE001
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _warm_torch()
    gc.freeze()  # children never scan (and so never copy-on-write) the warm heap in a garbage collection
    send({"ready": True, "pid": os.getpid(), "torch": torch.__version__})
    for line in sys.stdin:
        if line.strip():
            send(_serve_safely(line, execute, proto_fds))
    _reap_exiting(block=True)
    proto.close()
    os._exit(0)  # EOF: the sandbox closed; skip interpreter teardown (torch makes it slow)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
