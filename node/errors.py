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
#: The exit code of a local run that failed: 4 (the job failed) for every status, 1 for a result that does not
#: match its recomputation (status "mismatch": the user's result is wrong, the run itself did not fail).
EXIT_JOB_FAILED = 4


class AgentError(AgoraError):
    """The node cannot start or keep running (chain, registration, identity)."""


class LocalRunFailedError(AgoraError, RuntimeError):
    """A job run locally ended with a status other than ok (timeout, out-of-memory, bad-input, crash: exit 4, the
    status is in the message), or a result does not match its recomputation (status "mismatch": exit 1)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = 1 if status == "mismatch" else EXIT_JOB_FAILED


class RoundFailedError(AgoraError, RuntimeError):
    """The local round did not end "ok" in the sandbox (timeout, out-of-memory, bad input, crash)."""


class WorkerError(AgoraError, RuntimeError):
    """A sandbox worker could not start, died, or stopped answering."""


class WorkerGoneError(WorkerError):
    """The worker's pipe closed (it died); a fresh worker may retry the job."""


class DivergedError(SpecError):
    """Training produced a non-finite loss or weight; no weights are returned. Lower the learning rate."""


__all__ = ["EXIT_JOB_FAILED", "AgentError", "DivergedError", "LocalRunFailedError", "RoundFailedError",
           "WorkerError", "WorkerGoneError"]
