"""Error types. Each says whether retrying can help (transient) or not (terminal)."""

from __future__ import annotations


class DatapipeError(Exception):
    """Base class for errors datapipe reports to users; the message says what to do."""


class TerminalError(DatapipeError):
    """Retrying will not help: bad input, bad config, a refused credential."""


class TransientError(DatapipeError):
    """Retrying may help: rate limits, server errors, timeouts, dropped connections."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status, when the server answered


class ConfigError(TerminalError):
    """The pipeline configuration is invalid; the message names the key."""


class MissingDependencyError(TerminalError):
    """An optional dependency or packaged model is missing; the message gives the install line."""

    def __init__(self, what: str, install: str) -> None:
        super().__init__(f"{what} is not installed. Install it with: {install}")
        self.install = install


class TeacherError(DatapipeError):
    """A teacher request failed for good (retries exhausted or a terminal answer)."""

    def __init__(self, message: str, *, transient: bool, attempts: int) -> None:
        super().__init__(message)
        self.transient = transient
        self.attempts = attempts


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the operation that raised ``exc`` may succeed."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, TeacherError):
        return exc.transient
    return False


class TeacherRefused(TeacherError):
    """The teacher refused the credential (HTTP 401/403): every later request would be refused too, so the
    stage stops at once instead of turning each record into a reject."""

    stops_stage = True


class TeacherUnreachable(TeacherError):
    """The teacher's endpoint refused or dropped several connections in a row (the circuit breaker is open):
    further requests of this stage fail at once instead of spending their retries."""


class PendingError(TransientError):
    """A stage ended with records a retry can fix (the teacher was down, a budget ran out): they are pending,
    not rejected; the run is not complete and publishes nothing; the same command resumes it."""

    def __init__(self, message: str, pending: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.pending = pending or {}
