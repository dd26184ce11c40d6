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
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from vmdriver.errors import BackendUnavailable, SandboxNotRunning, VmPauseError, VmStartError
from vmdriver.isolation import FREEZER_FILE, bwrap_problem, freezer_set
from vmdriver.state import PAUSED_FILE, SandboxFolders, free_port, proc_start_time
from vmdriver.types import PauseMethod, VmHandle, VmSpec

__all__ = ["ProcessDriver"]

_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it, parents first."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def _stop_tree(pid: int) -> dict[str, str]:
    """SIGSTOP ``pid`` and its descendants, again until no new one appears (one may fork
    meanwhile); the processes stopped, by pid, with their start times."""
    stopped: dict[str, str] = {}
    for _ in range(20):
        fresh = [p for p in _process_tree(pid) if str(p) not in stopped]
        if not fresh:
            break
        for member in fresh:
            started = proc_start_time(member)
            if started is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGSTOP)
                stopped[str(member)] = started
    _await_stopped([int(member) for member in stopped])
    return stopped


def _await_stopped(pids: list[int], timeout: float = 2.0) -> None:
    """Wait until every thread of ``pids`` has stopped (or gone): a signal is delivered after
    ``kill`` returns, and a process may run on for a moment until it is."""
    deadline = time.monotonic() + timeout
    running = set(pids)
    while running and time.monotonic() < deadline:
        running = {pid for pid in running if not _all_threads_stopped(pid)}
        if running:
            time.sleep(0.005)


def _all_threads_stopped(pid: int) -> bool:
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("T", "t", "Z", "X"):
                    return False
    except OSError:
        return True  # gone
    return True


class ProcessDriver(SandboxFolders):
    """Runs each sandbox's ``image`` argv as a process in its own workspace.

    With ``isolation="bwrap"`` (the default) the process runs under bubblewrap, with cgroup
    limits, no network, and Unix sockets for its endpoint and its gateway (see ``isolation``);
    ``ro_binds`` are the host paths (host, inside) it may read, such as its interpreter. With
    ``isolation="none"`` it is a plain local process listening on a loopback port: only for
    hosts where bubblewrap cannot run and the operator has allowed unsandboxed processes.

    ``pause`` freezes the sandbox's processes with its freezer cgroup, where its supervisor
    made one; elsewhere (no freezer here, or no supervisor: ``isolation="none"``) it stops each
    of them with SIGSTOP, and says so in the sandbox's log. Either way their memory stays.
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
            # The supervisor is this very vmdriver, whatever other copy the interpreter has.
            package_root = str(Path(__file__).resolve().parent.parent)
            return (
                argv,
                {"PATH": os.environ.get("PATH", _SANDBOX_PATH), "PYTHONPATH": package_root},
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

    def _freezer(self, path: Path) -> tuple[Path | None, str]:
        """The sandbox's freezer group, or None and why it has none."""
        if self.isolation == "none":
            return None, "it runs unsandboxed, without cgroups"
        try:
            group = Path((path / FREEZER_FILE).read_text().strip())
        except OSError:
            return None, "it has no freezer cgroup on this host"
        if not (group / "freezer.state").exists():
            return None, f"its freezer cgroup {group} is gone"
        return group, ""

    def pause(self, sandbox_id: str, *, to_disk: bool = False) -> PauseMethod:
        """Freeze the running sandbox; its memory stays (``to_disk`` changes nothing here)."""
        path = self._existing_dir(sandbox_id)
        pid = self._live_pid(path)
        if pid is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
        if (method := self._paused_method(path)) is not None:
            return method
        group, reason = self._freezer(path)
        if group is not None:
            try:
                freezer_set(group, "FROZEN")
            except (OSError, TimeoutError) as exc:
                reason = f"its freezer cgroup failed: {exc}"
            else:
                self._record_paused(path, PauseMethod.FREEZER, group=str(group))
                return PauseMethod.FREEZER
        self._record_paused(path, PauseMethod.SIGSTOP, processes=_stop_tree(pid))
        self._note(path, f"paused by SIGSTOP to each of its processes: {reason}")
        return PauseMethod.SIGSTOP

    def _thaw(self, path: Path) -> None:
        record = self._paused(path)
        if record is None:
            return
        if record.get("method") == PauseMethod.FREEZER:
            group = Path(str(record.get("group", "")))
            if (group / "freezer.state").exists():
                try:
                    freezer_set(group, "THAWED")
                except (OSError, TimeoutError) as exc:
                    raise VmPauseError(f"the sandbox could not be thawed: {exc}") from exc
        else:
            processes = record.get("processes")
            for pid, started in (processes if isinstance(processes, dict) else {}).items():
                if proc_start_time(int(pid)) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGCONT)
        (path / PAUSED_FILE).unlink(missing_ok=True)

    def resume(self, sandbox_id: str) -> VmHandle:
        """Thaw a paused sandbox (a running one is left as it is)."""
        path = self._existing_dir(sandbox_id)
        pid = self._live_pid(path)
        if pid is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id!r} is not running")
        self._thaw(path)
        return VmHandle(sandbox_id, self.backend, (path / "endpoint").read_text(), pid)

    def _unpause_for_stop(self, path: Path) -> None:
        with contextlib.suppress(VmPauseError):
            self._thaw(path)
        super()._unpause_for_stop(path)

    def _forget(self, sandbox_id: str) -> None:
        shutil.rmtree(self._run_dir(sandbox_id), ignore_errors=True)
        # Nothing is left in the system's temporary folder after the last sandbox goes.
        with contextlib.suppress(OSError):  # not empty: other sandboxes still live
            self.socket_root.rmdir()
