"""The ``process`` backend: each sandbox is a local process with its own working directory.

State lives on disk under ``state_dir/<id>/`` (spec, pid, endpoint, log, workspace), so any
process on the host (any worker, a reconcile pass after a crash) sees the same sandboxes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path

from vmdriver.errors import SandboxNotFound, VmStartError
from vmdriver.types import VmHandle, VmSpec, VmState, VmStatus

__all__ = ["ProcessDriver"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``, which tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        _reap(pid)
        return None
    return fields[19]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class ProcessDriver:
    """Runs each sandbox's ``image`` argv as a process in its own session and workspace."""

    backend = "process"

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

    def create(self, spec: VmSpec) -> VmHandle:
        if not spec.image:
            raise ValueError("the process backend needs an argv in spec.image")
        path = self._dir(spec.name)
        (path / "workspace").mkdir(parents=True, exist_ok=True)
        data = {
            "name": spec.name,
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "image": list(spec.image),
            "env": dict(spec.env),
            "ports": list(spec.ports),
        }
        (path / "spec.json").write_text(json.dumps(data))
        return VmHandle(id=spec.name, backend=self.backend)

    def _spec(self, path: Path) -> VmSpec:
        data = json.loads((path / "spec.json").read_text())
        return VmSpec(
            name=data["name"],
            vcpus=data["vcpus"],
            memory_mib=data["memory_mib"],
            image=tuple(data["image"]),
            env=data["env"],
            ports=tuple(data["ports"]),
        )

    def _live_pid(self, path: Path) -> int | None:
        try:
            pid_text, started = (path / "pid").read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if _proc_start_time(pid) == started else None

    def start(self, handle: VmHandle) -> VmHandle:
        path = self._existing_dir(handle.id)
        if (pid := self._live_pid(path)) is not None:
            return VmHandle(handle.id, self.backend, (path / "endpoint").read_text(), pid)
        spec = self._spec(path)
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(path / "workspace")}
        env |= dict(spec.env) | {"AGENT_HOST": "127.0.0.1", "AGENT_PORT": str(port)}
        with (path / "log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    spec.image,
                    cwd=path / "workspace",
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise VmStartError(f"the sandbox process could not be started: {exc}") from exc
        started = _proc_start_time(proc.pid)
        if started is None:
            raise VmStartError("the sandbox process exited at once", log_tail=self.logs(handle.id))
        (path / "endpoint").write_text(endpoint)
        (path / "pid").write_text(f"{proc.pid} {started}")
        return VmHandle(handle.id, self.backend, endpoint, proc.pid)

    def stop(self, sandbox_id: str, *, timeout: float = 5.0) -> None:
        path = self._dir(sandbox_id)
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
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while self._live_pid(path) is not None and time.monotonic() < deadline + 2:
            time.sleep(0.02)

    def destroy(self, sandbox_id: str) -> None:
        path = self._dir(sandbox_id)
        if not path.exists():
            return
        self.stop(sandbox_id)
        shutil.rmtree(path, ignore_errors=True)

    def status(self, sandbox_id: str) -> VmStatus:
        path = self._existing_dir(sandbox_id)
        pid = self._live_pid(path)
        if pid is not None:
            endpoint = (path / "endpoint").read_text()
            return VmStatus(sandbox_id, VmState.RUNNING, endpoint, pid)
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
        return b"".join(tail).decode("utf-8", "replace")
