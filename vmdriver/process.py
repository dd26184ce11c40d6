"""The ``process`` backend: each sandbox is a local process with its own working directory.

State lives on disk under ``state_dir/<id>/`` (spec, pid, endpoint, log, workspace), so any
process on the host (any worker, a reconcile pass after a crash) sees the same sandboxes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from vmdriver.errors import BackendUnavailable, SandboxNotFound, VmStartError
from vmdriver.isolation import bwrap_problem
from vmdriver.types import VmHandle, VmSpec, VmState, VmStatus

__all__ = ["ProcessDriver"]

_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


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
    """Runs each sandbox's ``image`` argv as a process in its own workspace.

    With ``isolation="bwrap"`` (the default) the process runs under bubblewrap, with cgroup
    limits, no network, and Unix sockets for its endpoint and its gateway (see ``isolation``);
    ``ro_binds`` are the host paths (host, inside) it may read, such as its interpreter. With
    ``isolation="none"`` it is a plain local process listening on a loopback port: only for
    hosts where bubblewrap cannot run and the operator has allowed unsandboxed processes.
    """

    backend = "process"

    def __init__(
        self,
        *,
        state_dir: Path,
        isolation: str = "bwrap",
        ro_binds: Sequence[tuple[str, str]] = (),
        python: str = sys.executable,
    ) -> None:
        if isolation not in ("bwrap", "none"):
            raise ValueError(f"isolation must be 'bwrap' or 'none', not {isolation!r}")
        if isolation == "bwrap" and (problem := bwrap_problem()) is not None:
            raise BackendUnavailable(
                f"{problem}; the process backend refuses to run agents unsandboxed "
                "unless the operator allows it"
            )
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.isolation = isolation
        self.ro_binds = [(str(host), str(inside)) for host, inside in ro_binds]
        self.python = python
        # Socket paths are limited to 108 bytes, so each sandbox's sockets live under a short
        # folder of their own rather than under a possibly long state_dir.
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        self.socket_root = Path(tempfile.gettempdir()) / f"agent-console-{digest}"

    def _run_dir(self, sandbox_id: str) -> Path:
        return self.socket_root / sandbox_id

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
            "gateway": spec.gateway,
        }
        (path / "spec.json").write_text(json.dumps(data))
        secrets = path / "secrets.json"
        secrets.touch(mode=0o600)
        secrets.write_text(json.dumps(dict(spec.secrets)))
        self.socket_root.mkdir(mode=0o700, exist_ok=True)
        self._run_dir(spec.name).mkdir(mode=0o700, exist_ok=True)
        isolation = {
            "base_env": {"PATH": _SANDBOX_PATH},
            "ro_binds": self.ro_binds,
            "run_dir": str(self._run_dir(spec.name)),
        }
        (path / "isolation.json").write_text(json.dumps(isolation))
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
            gateway=data.get("gateway", ""),
        )

    def _secrets(self, path: Path) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads((path / "secrets.json").read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    def _live_pid(self, path: Path) -> int | None:
        try:
            pid_text, started = (path / "pid").read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if _proc_start_time(pid) == started else None

    def _launch(self, path: Path, spec: VmSpec) -> tuple[list[str], dict[str, str], str]:
        """The command, environment and endpoint that start this sandbox."""
        if self.isolation == "bwrap":
            argv = [self.python, "-m", "vmdriver.supervisor", str(path)]
            return (
                argv,
                {"PATH": os.environ.get("PATH", _SANDBOX_PATH)},
                f"unix:{self._run_dir(path.name) / 'agent.sock'}",
            )
        port = _free_port()
        env = {"PATH": os.environ.get("PATH", _SANDBOX_PATH), "HOME": str(path / "workspace")}
        # Unsandboxed, there is nothing to hide secrets from: they go in the environment.
        env |= dict(spec.env) | self._secrets(path) | {"SANDBOX_LISTEN": f"tcp:127.0.0.1:{port}"}
        return list(spec.image), env, f"http://127.0.0.1:{port}"

    def start(self, handle: VmHandle) -> VmHandle:
        path = self._existing_dir(handle.id)
        if (pid := self._live_pid(path)) is not None:
            return VmHandle(handle.id, self.backend, (path / "endpoint").read_text(), pid)
        argv, env, endpoint = self._launch(path, self._spec(path))
        with (path / "log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
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
        shutil.rmtree(self._run_dir(sandbox_id), ignore_errors=True)

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
