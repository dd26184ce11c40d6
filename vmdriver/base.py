"""The ``Driver`` protocol every backend implements, and the factory that picks one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from vmdriver.errors import BackendUnavailable
from vmdriver.process import ProcessDriver
from vmdriver.qemu import QemuDriver
from vmdriver.types import PauseMethod, VmHandle, VmSpec, VmStatus

__all__ = ["Driver", "make_driver"]


@runtime_checkable
class Driver(Protocol):
    """Creates, starts, pauses, resumes, watches, stops and destroys sandboxes. Every call is
    idempotent on the sandbox id: stopping a stopped sandbox, pausing a paused one, resuming a
    running one or destroying a missing one is not an error. ``pause`` says how it paused the
    sandbox; ``to_disk`` asks to free its memory too (a microVM's state is saved to disk; a
    process keeps its memory). ``resume`` continues it where it was."""

    backend: str

    def create(self, spec: VmSpec) -> VmHandle: ...

    def start(self, handle: VmHandle) -> VmHandle: ...

    def pause(self, sandbox_id: str, *, to_disk: bool = False) -> PauseMethod: ...

    def resume(self, sandbox_id: str) -> VmHandle: ...

    def stop(self, sandbox_id: str, *, timeout: float = 5.0) -> None: ...

    def destroy(self, sandbox_id: str) -> None: ...

    def status(self, sandbox_id: str) -> VmStatus: ...

    def list(self) -> list[VmStatus]: ...

    def logs(self, sandbox_id: str, *, lines: int = 50) -> str: ...


def make_driver(
    backend: str,
    *,
    state_dir: Path,
    isolation: str = "bwrap",
    ro_binds: Sequence[tuple[str, str]] = (),
    guest_dir: Path | None = None,
) -> Driver:
    """The driver for ``backend``, keeping its state under ``state_dir``; the ``qemu`` backend
    boots the guest built in ``guest_dir`` (by default ``state_dir``'s sibling ``guest``)."""
    if backend == "process":
        return ProcessDriver(state_dir=state_dir, isolation=isolation, ro_binds=ro_binds)
    if backend == "qemu":
        guest = guest_dir if guest_dir is not None else Path(state_dir).parent / "guest"
        return QemuDriver(state_dir=state_dir, guest_dir=guest)
    raise BackendUnavailable(f"sandbox backend {backend!r} is not available on this host")
