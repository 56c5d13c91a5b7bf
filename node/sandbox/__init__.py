"""The sandbox that runs jobs (no torch at import time): `Sandbox` keeps warm workers that fork a fresh, limited
child per job.

    sandbox.py  `Sandbox`, `run_in_process`: the parent side, result manifests and sandbox records
    _proc.py    one worker process (`python -m node.sandbox._worker`) and its line protocol
    _worker.py  the worker: imports torch once, forks a child per job, applies the limits
    _limits.py  rlimits, network isolation, a scrubbed environment, dying with the parent
    _job.py     reading a job's inputs, running the executor, mapping failures to typed statuses
"""

from node.sandbox.sandbox import PINNED_ENV, Sandbox, WorkerError, environment_for, run_in_process

__all__ = ["PINNED_ENV", "Sandbox", "WorkerError", "environment_for", "run_in_process"]
