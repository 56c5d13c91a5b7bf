"""Every exception the provider node raises of its own (the rest come from `marketplace.errors`).

    AgoraError (marketplace.errors)
    ├── AgentError              the node cannot start or keep running (chain, registration, identity, device)
    ├── LocalRunFailedError     `agora run` / `agora verify`: a local job did not end ok, or did not match
    ├── RoundFailedError        a collab participant's local training round did not end ok
    ├── WorkerError             a sandbox worker could not start, died, or stopped answering
    │   └── WorkerGoneError     the worker's pipe closed (it died); a fresh worker may retry the job
    └── SpecError (marketplace.errors)
        └── DivergedError       training produced a non-finite loss or weight

Each class also derives from the built-in exception it stands for where callers may expect one (RuntimeError).
"""

from __future__ import annotations

from marketplace.errors import AgoraError, SpecError

#: Exit codes of `agora run` / `agora verify` per job status (1 is a mismatch or any other error).
STATUS_EXIT = {"timeout": 3, "out-of-memory": 4, "bad-input": 5, "crash": 6}


class AgentError(AgoraError):
    """The node cannot start or keep running (chain, registration, identity)."""


class LocalRunFailedError(AgoraError, RuntimeError):
    """A job run locally ended with a status other than ok; `exit_code` tells which (see STATUS_EXIT)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = STATUS_EXIT.get(status, 1)


class RoundFailedError(AgoraError, RuntimeError):
    """The local round did not end "ok" in the sandbox (timeout, out-of-memory, bad input, crash)."""


class WorkerError(AgoraError, RuntimeError):
    """A sandbox worker could not start, died, or stopped answering."""


class WorkerGoneError(WorkerError):
    """The worker's pipe closed (it died); a fresh worker may retry the job."""


class DivergedError(SpecError):
    """Training produced a non-finite loss or weight; no weights are returned. Lower the learning rate."""


__all__ = ["STATUS_EXIT", "AgentError", "DivergedError", "LocalRunFailedError", "RoundFailedError",
           "WorkerError", "WorkerGoneError"]
