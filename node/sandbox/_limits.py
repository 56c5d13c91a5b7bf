"""Isolation applied inside a sandboxed job's child process: environment, network namespace, resource limits.

cgroups are not writable on our machines, so memory and CPU are bounded with rlimits:
  - RLIMIT_AS: the address space the child had at fork (the worker's torch, ~0.6 GiB, mostly shared and
    mapped, not used) plus `limits.memory_mb`, and never below 1 GiB (torch needs that much to work at all);
  - RLIMIT_CPU: `wall_seconds` x CPUs (+1 s): the CPU a job could burn in its wall time on all cores;
    SIGXCPU at the soft limit, SIGKILL 2 s later (the wall-clock timeout normally fires first);
  - RLIMIT_FSIZE: `output_mb` per file written (the outputs file, scratch files);
  - RLIMIT_NPROC: the user's current task count + CPUs + 8; root is exempt from it in the kernel, so there it
    is skipped and recorded as such;
  - RLIMIT_CORE: 0.
Each function returns what it applied, for the manifest's sandbox record.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
from pathlib import Path
from typing import Any

MiB = 1 << 20
AS_FLOOR_MB = 1024
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
#: Variables a job may see (when set for the worker); everything else is dropped.
PASS_THROUGH = ("PATH", "LANG", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MALLOC_ARENA_MAX")
#: Variables that must never reach a job (this one silently turns `torch.load(weights_only=True)` off).
FORBIDDEN = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent (the worker) dies."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def minimal_env(scratch: Path) -> dict[str, str]:
    """The job's whole environment: an allowlist of the current one, HOME/TMPDIR in scratch, hubs offline."""
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME=str(scratch), TMPDIR=str(scratch), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key in FORBIDDEN:
        env.pop(key, None)
    return env


def isolate_network() -> str:
    """Move this process into a fresh, empty network namespace (loopback down, no interfaces) when root.

    Returns "isolated" or "not isolated: <why>"; never raises."""
    if os.geteuid() != 0:
        return "not isolated: needs root (unshare CLONE_NEWNET)"
    libc = _libc()
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"not isolated: unshare failed: {os.strerror(ctypes.get_errno())}"
    return "isolated"


def _vsz_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()


def _user_tasks(uid: int) -> int:
    """How many tasks (threads included, as RLIMIT_NPROC counts them) the user runs now."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines()
                          if line.startswith(("Uid:", "Threads:")))
        except (OSError, ValueError):
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _set(which: int, soft: int, hard: int | None = None) -> None:
    """setrlimit that never raises the hard limit above the current one."""
    _, cur_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if cur_hard != resource.RLIM_INFINITY:
        hard, soft = min(hard, cur_hard), min(soft, cur_hard)
    resource.setrlimit(which, (soft, hard))


def apply_limits(limits: Any, *, cpus: int | None = None) -> dict[str, Any]:
    """Set the rlimits described in the module docstring from a spec's `limits`. Raises OSError/ValueError
    only if the kernel refuses a lowering (it should not)."""
    cpus = cpus or os.cpu_count() or 1
    applied: dict[str, Any] = {}
    vsz = _vsz_bytes()
    as_bytes = max(vsz + limits.memory_mb * MiB, AS_FLOOR_MB * MiB)
    applied["as_mb"] = as_bytes // MiB
    applied["as_baseline_mb"] = vsz // MiB
    cpu_s = math.ceil(limits.wall_seconds * cpus) + 1
    _set(resource.RLIMIT_CPU, cpu_s, cpu_s + 2)
    applied["cpu_s"] = cpu_s
    _set(resource.RLIMIT_FSIZE, limits.output_mb * MiB)
    applied["fsize_mb"] = limits.output_mb
    _set(resource.RLIMIT_CORE, 0)
    if os.geteuid() == 0:
        applied["nproc"] = "skipped: root is exempt from RLIMIT_NPROC"
    else:
        nproc = _user_tasks(os.getuid()) + cpus + 8
        _set(resource.RLIMIT_NPROC, nproc)
        applied["nproc"] = nproc
    _set(resource.RLIMIT_AS, as_bytes)  # last: the /proc scan above allocates
    return applied
