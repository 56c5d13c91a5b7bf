"""The caller's side of one sandbox worker process: start it, send a request, read the answer with a deadline.

The worker speaks one JSON object per line: first `{"ready": true|false, ...}`, then one answer per request.
Any protocol failure (no answer in time, EOF, garbage) raises `WorkerError`; the sandbox then stops the
worker and starts a fresh one for the next job.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node.errors import WorkerError, WorkerGoneError

#: Seconds a worker may take to import torch and the executor (a cold `import torch` takes ~2.4 s).
START_TIMEOUT_S = 120.0


class WorkerProcess:
    """One `python -m node.sandbox._worker` process in its own session, with `extra_env` set before torch loads."""

    def __init__(self, env_name: str, executor: str, *, extra_env: dict[str, str], log_dir: Path) -> None:
        self.env_name = env_name
        self.executor = executor
        self.extra_env = dict(extra_env)
        self.log_path = Path(log_dir) / f"worker-{env_name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self.info: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        env.update(self.extra_env)
        env.setdefault("MALLOC_ARENA_MAX", "2")  # glibc reserves 64 MiB of address space per arena otherwise
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def ensure_started(self) -> None:
        """Start the worker unless it is running; wait for its ready line. Raises WorkerError."""
        if self.alive:
            return
        self.stop()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "node.sandbox._worker", self.executor], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, env=self._env(), start_new_session=True, close_fds=True)
        self._buf = b""
        hello = self._read(time.monotonic() + START_TIMEOUT_S)
        if not hello.get("ready"):
            self.stop()
            raise WorkerError(f"worker failed to start: {hello.get('error', 'no reason given')}")
        self.info = hello

    def request(self, obj: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send one request and return the answer. Raises WorkerError (dead, silent past `timeout`, garbage)."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerGoneError(f"worker is gone ({err})") from None
        return self._read(time.monotonic() + timeout)

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError("worker did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self._proc.wait(timeout=5)
                    raise WorkerGoneError(f"worker exited (code {code}); see {self.log_path}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return dict(json.loads(line))
        except ValueError:
            raise WorkerError(f"worker sent garbage: {line[:200]!r}") from None

    def stop(self, *, grace: float = 3.0) -> None:
        """Close the worker's stdin (it exits), SIGKILL its process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=grace if proc.poll() is None else 0.1)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
