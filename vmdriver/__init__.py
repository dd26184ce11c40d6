"""vmdriver: start, watch and stop sandboxes, independent of any web framework.

A ``Driver`` turns a ``VmSpec`` into a running sandbox described by a ``VmHandle``. Backends:
``process`` (a process under bubblewrap, or plain where the operator allows it) and ``qemu``
(a QEMU microVM).
This package is configured only by arguments and never imports the console's frameworks.
"""

from __future__ import annotations

from vmdriver.base import Driver, make_driver
from vmdriver.errors import (
    BackendUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
    VmDriverError,
    VmPauseError,
    VmStartError,
)
from vmdriver.types import PauseMethod, VmHandle, VmSpec, VmState, VmStatus

__all__ = [
    "BackendUnavailable",
    "Driver",
    "PauseMethod",
    "SandboxNotFound",
    "SandboxNotRunning",
    "VmDriverError",
    "VmHandle",
    "VmPauseError",
    "VmSpec",
    "VmStartError",
    "VmState",
    "VmStatus",
    "make_driver",
]
