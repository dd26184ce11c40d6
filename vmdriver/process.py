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
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vmdriver.errors import BackendUnavailable, VmStartError
from vmdriver.isolation import bwrap_problem
from vmdriver.state import SandboxFolders, free_port, proc_start_time
from vmdriver.types import VmHandle, VmSpec

__all__ = ["ProcessDriver"]

_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class ProcessDriver(SandboxFolders):
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
        super().__init__(state_dir=state_dir)
        self.isolation = isolation
        self.ro_binds = [(str(host), str(inside)) for host, inside in ro_binds]
        self.python = python
        # Socket paths are limited to 108 bytes, so each sandbox's sockets live under a short
        # folder of their own rather than under a possibly long state_dir.
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        self.socket_root = Path(tempfile.gettempdir()) / f"agent-console-{digest}"

    def _run_dir(self, sandbox_id: str) -> Path:
        return self.socket_root / sandbox_id

    def _make_run_dir(self, sandbox_id: str) -> None:
        # The last sandbox's _forget (in any process) removes socket_root: make it again.
        for _ in range(3):
            self.socket_root.mkdir(mode=0o700, exist_ok=True)
            try:
                self._run_dir(sandbox_id).mkdir(mode=0o700, exist_ok=True)
                return
            except FileNotFoundError:
                continue
        raise VmStartError(f"could not make the sandbox's socket folder in {self.socket_root}")

    def create(self, spec: VmSpec) -> VmHandle:
        if not spec.image:
            raise ValueError("the process backend needs an argv in spec.image")
        path = self._dir(spec.name)
        (path / "workspace").mkdir(parents=True, exist_ok=True)
        self._write_spec(path, spec)
        self._make_run_dir(spec.name)
        isolation = {
            "base_env": {"PATH": _SANDBOX_PATH},
            "ro_binds": self.ro_binds,
            "run_dir": str(self._run_dir(spec.name)),
        }
        (path / "isolation.json").write_text(json.dumps(isolation))
        return VmHandle(id=spec.name, backend=self.backend)

    def _launch(self, path: Path, spec: VmSpec) -> tuple[list[str], dict[str, str], str]:
        """The command, environment and endpoint that start this sandbox."""
        if self.isolation == "bwrap":
            argv = [self.python, "-m", "vmdriver.supervisor", str(path)]
            return (
                argv,
                {"PATH": os.environ.get("PATH", _SANDBOX_PATH)},
                f"unix:{self._run_dir(path.name) / 'agent.sock'}",
            )
        port = free_port()
        env = {"PATH": os.environ.get("PATH", _SANDBOX_PATH), "HOME": str(path / "workspace")}
        # Unsandboxed, there is nothing to hide secrets from: they go in the environment.
        env |= dict(spec.env) | dict(spec.secrets) | {"SANDBOX_LISTEN": f"tcp:127.0.0.1:{port}"}
        if spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(unit.uuid for unit in spec.gpus)
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
        started = proc_start_time(proc.pid)
        if started is None:
            raise VmStartError("the sandbox process exited at once", log_tail=self.logs(handle.id))
        (path / "endpoint").write_text(endpoint)
        (path / "pid").write_text(f"{proc.pid} {started}")
        return VmHandle(handle.id, self.backend, endpoint, proc.pid)

    def _forget(self, sandbox_id: str) -> None:
        shutil.rmtree(self._run_dir(sandbox_id), ignore_errors=True)
        # Nothing is left in the system's temporary folder after the last sandbox goes.
        with contextlib.suppress(OSError):  # not empty: other sandboxes still live
            self.socket_root.rmdir()
