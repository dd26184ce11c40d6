"""Isolation for the ``process`` backend: bubblewrap namespaces and cgroup limits.

A sandboxed process gets its own PID, IPC, UTS, user and network namespaces, a read-only view
of the system, a private writable workspace, and no network at all: it listens on a Unix socket
and reaches its gateway through another, both in a folder bound into the sandbox.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FREEZER_FILE",
    "INSIDE_RUN_DIR",
    "INSIDE_WORKSPACE",
    "CgroupLimits",
    "bwrap_argv",
    "bwrap_problem",
    "freezer_set",
]

INSIDE_WORKSPACE = "/workspace"
INSIDE_RUN_DIR = "/run/sandbox"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/alternatives")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
# The sandbox's file naming its freezer group, written by its supervisor.
FREEZER_FILE = "freezer"


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox a process on this host, or None when it can."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "true",
    ]
    try:
        result = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap cannot run: {exc}"
    if result.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {result.stderr.decode()[:300]}"
    return None


def bwrap_argv(
    *,
    workspace: Path,
    run_dir: Path,
    ro_binds: Sequence[tuple[str, str]],
    hostname: str,
    devices: Sequence[str] = (),
) -> list[str]:
    """The bubblewrap command line that wraps a sandboxed program (which follows it);
    ``devices`` are bubblewrap's arguments binding host device nodes into its ``/dev`` (the
    GPUs given to it, ``vmdriver.gpus.gpu_dev_binds``)."""
    bwrap = shutil.which("bwrap") or "bwrap"
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        hostname,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        *devices,
    ]
    for path in _SYSTEM_DIRS:
        argv += ["--ro-bind-try", path, path]
    for host, inside in ro_binds:
        argv += ["--ro-bind", host, inside]
    argv += [
        "--bind",
        str(workspace),
        INSIDE_WORKSPACE,
        "--bind",
        str(run_dir),
        INSIDE_RUN_DIR,
        "--chdir",
        INSIDE_WORKSPACE,
        "--setenv",
        "HOME",
        INSIDE_WORKSPACE,
    ]
    return argv


def _own_cgroup(controller: str) -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return _CGROUP_ROOT / controller / path.lstrip("/")
    return None


@dataclass
class CgroupLimits:
    """Memory, process-count and CPU limits for one sandbox, as cgroup (v1) groups, and a
    freezer group that pauses it.

    ``apply()`` creates the groups and writes the limits; ``join()`` (called in the child before
    it runs the program) moves the calling process in; ``remove()`` deletes the groups.
    """

    name: str
    memory_mib: int
    vcpus: int
    max_processes: int = 256

    def __post_init__(self) -> None:
        self.groups: list[Path] = []
        self.problems: list[str] = []
        self.freezer: Path | None = None

    def _group(self, controller: str, limits: dict[str, str]) -> Path | None:
        parent = _own_cgroup(controller)
        if parent is None or not parent.is_dir():
            self.problems.append(f"no {controller} cgroup")
            return None
        group = parent / "agent-console" / self.name
        try:
            group.mkdir(parents=True, exist_ok=True)
            for knob, value in limits.items():
                (group / knob).write_text(value)
        except OSError as exc:
            self.problems.append(f"{controller} cgroup: {exc.strerror or exc}")
            return None
        self.groups.append(group)
        return group

    def apply(self) -> None:
        memory = str(self.memory_mib * 1024 * 1024)
        self._group("memory", {"memory.limit_in_bytes": memory})
        self._group("pids", {"pids.max": str(self.max_processes)})
        self._group(
            "cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(self.vcpus * 100000)}
        )
        self.freezer = self._group("freezer", {})

    def join(self) -> None:
        pid = str(os.getpid())
        for group in self.groups:
            (group / "cgroup.procs").write_text(pid)

    def remove(self) -> None:
        # A group empties a moment after its last process exits, so try a few times.
        if self.freezer is not None:  # frozen tasks would never exit
            with contextlib.suppress(OSError):
                (self.freezer / "freezer.state").write_text("THAWED")
        for group in self.groups:
            for _ in range(50):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    break
                time.sleep(0.02)


def freezer_set(group: Path, state: str, *, timeout: float = 10.0) -> None:
    """Freeze (``FROZEN``) or thaw (``THAWED``) every process of a freezer group, and wait
    until the kernel says it is done; ``OSError`` when it cannot, ``TimeoutError`` when a
    freeze does not finish in ``timeout`` (the group is thawed again)."""
    knob = group / "freezer.state"
    knob.write_text(state)
    deadline = time.monotonic() + timeout
    while knob.read_text().strip() != state:
        if time.monotonic() > deadline:
            if state == "FROZEN":
                knob.write_text("THAWED")
            raise TimeoutError(f"the freezer group {group.name} did not reach {state}")
        time.sleep(0.005)
        knob.write_text(state)  # a task forked mid-freeze is caught by writing again
