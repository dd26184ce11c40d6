"""What the local backends share: each sandbox is a folder under ``state_dir`` (its spec, the
pid and start time of its process group's leader, its endpoint, its log, and while it is paused
how), so any process on the host, a worker or a reconcile pass after a crash, sees the same
sandboxes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from collections import deque
from pathlib import Path

from vmdriver.errors import SandboxNotFound
from vmdriver.gpus import GpuUnit
from vmdriver.types import PauseMethod, VmSpec, VmState, VmStatus

__all__ = ["PAUSED_FILE", "SandboxFolders", "free_port", "proc_start_time", "write_private"]

PAUSED_FILE = "paused"  # while paused: how (JSON: method, and what the method needs undone)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``, which tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return fields[19]


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class SandboxFolders:
    """The on-disk state and the process-group handling the local backends have in common."""

    backend = ""

    def __init__(self, *, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise SandboxNotFound(f"invalid sandbox id {sandbox_id!r}")
        return self.state_dir / sandbox_id

    def _existing_dir(self, sandbox_id: str) -> Path:
        path = self._dir(sandbox_id)
        if not (path / "spec.json").exists():
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        return path

    def _write_spec(self, path: Path, spec: VmSpec) -> None:
        data = {
            "name": spec.name,
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "image": list(spec.image),
            "env": dict(spec.env),
            "ports": list(spec.ports),
            "gateway": spec.gateway,
            "gpus": [unit.as_dict() for unit in spec.gpus],
        }
        write_private(path / "spec.json", json.dumps(data))
        write_private(path / "secrets.json", json.dumps(dict(spec.secrets)))

    def _spec(self, path: Path) -> VmSpec:
        data = json.loads((path / "spec.json").read_text())
        try:
            secrets = json.loads((path / "secrets.json").read_text())
        except (OSError, ValueError):
            secrets = {}
        return VmSpec(
            name=data["name"],
            vcpus=data["vcpus"],
            memory_mib=data["memory_mib"],
            image=tuple(data["image"]),
            env=data["env"],
            ports=tuple(data["ports"]),
            gateway=data.get("gateway", ""),
            secrets=secrets,
            gpus=tuple(GpuUnit(**unit) for unit in data.get("gpus", ())),
        )

    def _live_pid(self, path: Path) -> int | None:
        try:
            pid_text, started = (path / "pid").read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if proc_start_time(pid) == started else None

    def _paused(self, path: Path) -> dict[str, object] | None:
        """What the sandbox's pause recorded, or None when it is not paused."""
        try:
            record = json.loads((path / PAUSED_FILE).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _paused_method(self, path: Path) -> PauseMethod | None:
        record = self._paused(path)
        try:
            return PauseMethod(str(record["method"])) if record else None
        except (KeyError, ValueError):
            return None

    def _record_paused(self, path: Path, method: PauseMethod, **details: object) -> None:
        tmp = path / f".{PAUSED_FILE}.tmp"
        tmp.write_text(json.dumps({"method": method.value, **details}))
        tmp.replace(path / PAUSED_FILE)

    def _note(self, path: Path, line: str) -> None:
        """A line of the driver's own in the sandbox's log."""
        with contextlib.suppress(OSError), (path / "log").open("a") as log:
            log.write(f"sandbox: {line}\n")

    def _unpause_for_stop(self, path: Path) -> None:
        """Undo a pause before the sandbox is stopped (a frozen process never sees SIGTERM)."""
        (path / PAUSED_FILE).unlink(missing_ok=True)

    def stop(self, sandbox_id: str, *, timeout: float = 5.0) -> None:
        """SIGTERM the sandbox's whole process group, then SIGKILL what is left after
        ``timeout``. A paused sandbox is resumed first, or its saved state dropped."""
        path = self._dir(sandbox_id)
        if (path / PAUSED_FILE).exists():
            self._unpause_for_stop(path)
        self._end(path, timeout)

    def _end(self, path: Path, timeout: float = 5.0) -> None:
        """End the sandbox's process group, whatever it was doing."""
        pid = self._live_pid(path)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._live_pid(path) is None:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while self._live_pid(path) is not None and time.monotonic() < deadline + 2:
            time.sleep(0.02)

    def _forget(self, sandbox_id: str) -> None:
        """Remove what a backend keeps for a sandbox outside its folder."""

    def destroy(self, sandbox_id: str) -> None:
        path = self._dir(sandbox_id)
        if not path.exists():
            return
        self.stop(sandbox_id)
        shutil.rmtree(path, ignore_errors=True)
        self._forget(sandbox_id)

    def status(self, sandbox_id: str) -> VmStatus:
        path = self._existing_dir(sandbox_id)
        pid = self._live_pid(path)
        paused = self._paused_method(path)
        if pid is not None:
            endpoint = (path / "endpoint").read_text()
            if paused is not None:
                return VmStatus(sandbox_id, VmState.PAUSED, endpoint, pid, paused=paused)
            return VmStatus(sandbox_id, VmState.RUNNING, endpoint, pid)
        if paused is PauseMethod.SNAPSHOT:  # its state is on disk, no process runs it
            return VmStatus(sandbox_id, VmState.PAUSED, paused=paused)
        state = VmState.EXITED if (path / "pid").exists() else VmState.CREATED
        return VmStatus(sandbox_id, state)

    def list(self) -> list[VmStatus]:
        found = []
        for path in sorted(self.state_dir.iterdir()):
            if (path / "spec.json").exists():
                found.append(self.status(path.name))
        return found

    def logs(self, sandbox_id: str, *, lines: int = 50) -> str:
        log = self._existing_dir(sandbox_id) / "log"
        if not log.exists():
            return ""
        with log.open("rb") as handle:
            tail = deque(handle, maxlen=lines)
        return b"".join(tail).decode("utf-8", "replace").replace("\r\n", "\n")
