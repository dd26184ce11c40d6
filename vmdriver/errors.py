"""Errors raised by vmdriver backends."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "SandboxNotFound",
    "SandboxNotRunning",
    "VmDriverError",
    "VmPauseError",
    "VmStartError",
]


class VmDriverError(Exception):
    """Base of every vmdriver error."""


class BackendUnavailable(VmDriverError):
    """The backend cannot run on this host (a tool is missing, or a check failed)."""


class SandboxNotFound(VmDriverError):
    """No sandbox with that id is known to this driver."""


class SandboxNotRunning(VmDriverError):
    """The sandbox exists but is not running: there is nothing to pause."""


class VmPauseError(VmDriverError):
    """The sandbox could not be paused or resumed."""


class VmStartError(VmDriverError):
    """The sandbox was created but did not start; ``log_tail`` holds its last output."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail
