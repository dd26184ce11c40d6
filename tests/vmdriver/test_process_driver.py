"""The ``process`` backend driving real processes: lifecycle, idempotence, state and pid reuse.

These run the backend without isolation (plain local processes); ``test_bwrap_sandbox.py``
covers what bubblewrap adds.

These tests use neither Django nor the shared fixtures of ``tests/conftest.py``, so they also
pass under ``pytest --noconftest -p no:django`` (see ``test_boundaries.py``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.polling import eventually
from vmdriver import (
    BackendUnavailable,
    Driver,
    SandboxNotFound,
    VmHandle,
    VmSpec,
    VmStartError,
    VmState,
    make_driver,
)
from vmdriver.process import ProcessDriver

REPO_ROOT = Path(__file__).resolve().parents[2]

# A tiny sandbox: answers every GET with $GREETING where SANDBOX_LISTEN says (tcp: or unix:).
SERVER = """
import http.server, os, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "ok").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
    def address_string(self):
        return "sandbox"
class UnixHTTPServer(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("sandbox", 0)
listen = os.environ["SANDBOX_LISTEN"]
print("listening on", listen, flush=True)
if listen.startswith("unix:"):
    UnixHTTPServer(listen[5:], Handler).serve_forever()
else:
    host, port = listen[4:].rsplit(":", 1)
    http.server.HTTPServer((host, int(port)), Handler).serve_forever()
"""


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def _spec(name: str, code: str = SERVER, **env: str) -> VmSpec:
    return VmSpec(name=name, image=_python(code), env=env)


def _get(endpoint: str) -> httpx.Response | None:
    """GET / on a sandbox endpoint (``http://…`` or ``unix:<socket>``), or None if unreachable."""
    transport = None
    if endpoint.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=endpoint.removeprefix("unix:"))
        endpoint = "http://sandbox"
    try:
        with httpx.Client(transport=transport, timeout=1.0) as client:
            return client.get(endpoint)
    except httpx.HTTPError:
        return None


def _wait_reachable(endpoint: str, timeout: float = 5.0) -> httpx.Response:
    found: list[httpx.Response] = []

    def answered() -> bool:
        response = _get(endpoint)
        if response is not None:
            found.append(response)
        return bool(found)

    eventually(answered, timeout, failing=f"{endpoint} never answered")
    return found[0]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a live (not zombie) ``pid``, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[ProcessDriver]:
    """A driver keeping its state in ``tmp_path``; every sandbox it knows is destroyed after."""
    drv = ProcessDriver(state_dir=tmp_path / "sandboxes", isolation="none")
    yield drv
    for status in drv.list():
        drv.destroy(status.id)


@pytest.fixture
def running(driver: ProcessDriver) -> Callable[..., VmHandle]:
    """``running(name, code=SERVER, **env)``: a started sandbox whose endpoint answers."""

    def make(name: str, code: str = SERVER, **env: str) -> VmHandle:
        handle = driver.start(driver.create(_spec(name, code, **env)))
        _wait_reachable(handle.endpoint)
        return handle

    return make


def test_create_then_start_runs_the_image_with_a_reachable_endpoint(driver: ProcessDriver) -> None:
    created = driver.create(_spec("sbx-1", GREETING="hello from the sandbox"))
    assert created == VmHandle(id="sbx-1", backend="process")
    assert driver.status("sbx-1").state is VmState.CREATED

    handle = driver.start(created)

    assert handle.endpoint.startswith("http://127.0.0.1:")
    assert handle.pid is not None
    status = driver.status("sbx-1")
    assert (status.state, status.endpoint, status.pid) == (
        VmState.RUNNING,
        handle.endpoint,
        handle.pid,
    )
    response = _wait_reachable(handle.endpoint)
    assert (response.status_code, response.text) == (200, "hello from the sandbox")


def test_start_is_idempotent(driver: ProcessDriver, running: Callable[..., VmHandle]) -> None:
    first = running("sbx-1")

    again = driver.start(VmHandle(id="sbx-1", backend="process"))

    assert (again.pid, again.endpoint) == (first.pid, first.endpoint)
    assert [s.id for s in driver.list()] == ["sbx-1"]


def test_start_after_stop_runs_a_new_process(
    driver: ProcessDriver, running: Callable[..., VmHandle]
) -> None:
    first = running("sbx-1")
    driver.stop("sbx-1")

    second = driver.start(VmHandle(id="sbx-1", backend="process"))

    assert second.pid != first.pid
    assert _wait_reachable(second.endpoint).status_code == 200
    assert driver.status("sbx-1").state is VmState.RUNNING


def test_start_of_an_unknown_sandbox_raises_not_found(driver: ProcessDriver) -> None:
    with pytest.raises(SandboxNotFound):
        driver.start(VmHandle(id="never-created", backend="process"))


def test_sandbox_runs_in_its_workspace_with_only_its_own_environment(
    driver: ProcessDriver, running: Callable[..., VmHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_ONLY_SECRET", "must-not-reach-the-sandbox")

    handle = running("sbx-1", GREETING="hi")

    assert handle.pid is not None
    raw = Path(f"/proc/{handle.pid}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    workspace = driver.state_dir / "sbx-1" / "workspace"
    assert "CONSOLE_ONLY_SECRET" not in env
    assert env["GREETING"] == "hi"
    assert env["HOME"] == str(workspace)
    assert env["SANDBOX_LISTEN"] == "tcp:127.0.0.1:" + handle.endpoint.rsplit(":")[-1]
    assert Path(f"/proc/{handle.pid}/cwd").resolve() == workspace.resolve()


def test_stop_ends_the_whole_process_group(
    driver: ProcessDriver, running: Callable[..., VmHandle], tmp_path: Path
) -> None:
    child_pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n" + SERVER
    )
    handle = running("sbx-1", code)
    eventually(
        lambda: child_pid_file.exists() and child_pid_file.read_text(), failing="no pid file"
    )
    child_pid = int(child_pid_file.read_text())
    child_started = _start_time(child_pid)
    assert handle.pid is not None and child_started is not None

    driver.stop("sbx-1")

    assert driver.status("sbx-1").state is VmState.EXITED
    assert _start_time(handle.pid) is None
    # The grandchild is reparented elsewhere once its parent dies; it must die too.
    eventually(lambda: _start_time(child_pid) != child_started, 3, failing="the child lives on")
    assert _get(handle.endpoint) is None


def test_stop_kills_a_sandbox_that_ignores_sigterm(
    driver: ProcessDriver, running: Callable[..., VmHandle]
) -> None:
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SERVER
    handle = running("sbx-1", code)
    assert handle.pid is not None

    started = time.monotonic()
    driver.stop("sbx-1", timeout=0.3)

    assert time.monotonic() - started < 3
    assert _start_time(handle.pid) is None
    assert driver.status("sbx-1").state is VmState.EXITED


def test_stop_is_idempotent(driver: ProcessDriver, running: Callable[..., VmHandle]) -> None:
    handle = running("sbx-1")
    driver.create(_spec("never-started"))

    driver.stop("sbx-1")
    driver.stop("sbx-1")
    driver.stop("never-started")
    driver.stop("never-created")

    assert handle.pid is not None and _start_time(handle.pid) is None
    assert driver.status("sbx-1").state is VmState.EXITED
    assert driver.status("never-started").state is VmState.CREATED


def test_destroy_removes_the_process_and_its_state(
    driver: ProcessDriver, running: Callable[..., VmHandle]
) -> None:
    handle = running("sbx-1")
    (driver.state_dir / "sbx-1" / "workspace" / "notes.txt").write_text("scratch")

    driver.destroy("sbx-1")

    assert handle.pid is not None and _start_time(handle.pid) is None
    assert not (driver.state_dir / "sbx-1").exists()
    assert driver.list() == []
    with pytest.raises(SandboxNotFound):
        driver.status("sbx-1")


def test_destroy_is_idempotent_and_ignores_a_missing_id(driver: ProcessDriver) -> None:
    driver.create(_spec("sbx-1"))

    driver.destroy("sbx-1")
    driver.destroy("sbx-1")
    driver.destroy("never-created")

    assert driver.list() == []


def test_status_of_an_unknown_sandbox_raises_not_found(driver: ProcessDriver) -> None:
    with pytest.raises(SandboxNotFound):
        driver.status("never-created")


@pytest.mark.parametrize("bad_id", ["", "../escape", "a/b", ".hidden"])
def test_ids_that_could_leave_the_state_dir_are_not_found(
    driver: ProcessDriver, bad_id: str
) -> None:
    with pytest.raises(SandboxNotFound):
        driver.status(bad_id)
    with pytest.raises(SandboxNotFound):
        driver.destroy(bad_id)


def test_list_shows_created_running_and_exited_sandboxes(
    driver: ProcessDriver, running: Callable[..., VmHandle]
) -> None:
    driver.create(_spec("a-created"))
    handle = running("b-running")
    running("c-exited")
    driver.stop("c-exited")

    found = driver.list()

    assert [(s.id, s.state) for s in found] == [
        ("a-created", VmState.CREATED),
        ("b-running", VmState.RUNNING),
        ("c-exited", VmState.EXITED),
    ]
    assert (found[1].endpoint, found[1].pid) == (handle.endpoint, handle.pid)


def test_a_second_driver_on_the_same_state_dir_sees_the_same_sandboxes(
    driver: ProcessDriver, running: Callable[..., VmHandle]
) -> None:
    handle = running("sbx-1")

    other = ProcessDriver(state_dir=driver.state_dir, isolation="none")

    status = other.status("sbx-1")
    assert (status.state, status.pid, status.endpoint) == (
        VmState.RUNNING,
        handle.pid,
        handle.endpoint,
    )


def test_logs_return_the_tail_of_stdout_and_stderr(driver: ProcessDriver) -> None:
    code = (
        "import sys, time\n"
        "for n in range(100):\n"
        "    print(f'line {n}', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    driver.create(_spec("sbx-1", code))
    assert driver.logs("sbx-1") == ""
    driver.start(VmHandle(id="sbx-1", backend="process"))

    eventually(lambda: "to stderr" in driver.logs("sbx-1"), failing="nothing on stderr")

    assert driver.logs("sbx-1", lines=3) == "line 98\nline 99\nto stderr\n"
    assert driver.logs("sbx-1").splitlines()[0] == "line 51"
    with pytest.raises(SandboxNotFound):
        driver.logs("never-created")


def test_a_process_that_exits_at_once_is_reported_exited(driver: ProcessDriver) -> None:
    code = "import sys\nprint('boom: no config', file=sys.stderr, flush=True)\nsys.exit(3)\n"
    driver.create(_spec("sbx-1", code))

    try:
        driver.start(VmHandle(id="sbx-1", backend="process"))
    except VmStartError as exc:  # it may already be gone when start() looks
        assert "boom: no config" in exc.log_tail
        assert driver.status("sbx-1").state is not VmState.RUNNING
    else:
        eventually(lambda: driver.status("sbx-1").state is VmState.EXITED, failing="never exited")

    assert "boom: no config" in driver.logs("sbx-1")


def test_an_image_that_cannot_run_raises_start_error(driver: ProcessDriver, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-runtime")
    driver.create(VmSpec(name="sbx-1", image=(missing,)))

    with pytest.raises(VmStartError):
        driver.start(VmHandle(id="sbx-1", backend="process"))

    assert driver.status("sbx-1").state is not VmState.RUNNING


@pytest.fixture
def system_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private stand-in for the system's temporary folder, short enough for socket paths."""
    path = Path(tempfile.mkdtemp(prefix="ac-"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("agent-console-*"))


def test_sandboxes_leave_nothing_in_the_temporary_folder(system_tmp: Path, tmp_path: Path) -> None:
    drv = ProcessDriver(state_dir=tmp_path / "sandboxes", isolation="none")
    assert _leftovers(system_tmp) == []
    for name in ("sbx-1", "sbx-2"):
        drv.start(drv.create(_spec(name)))
    assert len(_leftovers(system_tmp)) == 1  # their socket folders, under one of this driver's

    drv.destroy("sbx-1")
    assert len(_leftovers(system_tmp)) == 1  # sbx-2 still lives
    drv.destroy("sbx-2")
    assert _leftovers(system_tmp) == []

    # A sandbox that failed to start, once destroyed, leaves nothing either.
    drv.create(VmSpec(name="sbx-3", image=(str(tmp_path / "no-such-runtime"),)))
    with pytest.raises(VmStartError):
        drv.start(VmHandle(id="sbx-3", backend="process"))
    drv.destroy("sbx-3")
    assert _leftovers(system_tmp) == []


def test_a_sandbox_made_while_another_is_destroyed_gets_its_socket_folder(
    system_tmp: Path, tmp_path: Path
) -> None:
    drv = ProcessDriver(state_dir=tmp_path / "sandboxes", isolation="none")
    drv.create(_spec("sbx-1"))
    drv.destroy("sbx-1")  # the shared folder goes with its last sandbox…
    handle = drv.start(drv.create(_spec("sbx-2")))  # …and comes back for the next
    _wait_reachable(handle.endpoint)
    assert (drv.socket_root / "sbx-2").is_dir()
    drv.destroy("sbx-2")


def test_create_without_an_argv_is_refused(driver: ProcessDriver) -> None:
    with pytest.raises(ValueError, match="argv"):
        driver.create(VmSpec(name="sbx-1"))


def test_a_reused_pid_is_not_mistaken_for_the_sandbox(driver: ProcessDriver) -> None:
    driver.create(_spec("sbx-1"))
    pid_file = driver.state_dir / "sbx-1" / "pid"
    (driver.state_dir / "sbx-1" / "endpoint").write_text("http://127.0.0.1:9")
    own_start = _start_time(os.getpid())
    assert own_start is not None
    # Sanity check: with the right start time, this (live, unrelated) pid would count as the
    # sandbox. The file is rewritten before anything could signal it.
    try:
        pid_file.write_text(f"{os.getpid()} {own_start}")
        assert driver.status("sbx-1").pid == os.getpid()
    finally:
        pid_file.write_text(f"{os.getpid()} {int(own_start) + 1}")

    status = driver.status("sbx-1")
    assert (status.state, status.pid) == (VmState.EXITED, None)
    assert [s.state for s in driver.list()] == [VmState.EXITED]
    driver.stop("sbx-1")  # must not signal this test's own process
    handle = driver.start(VmHandle(id="sbx-1", backend="process"))
    assert handle.pid not in (None, os.getpid())
    assert _wait_reachable(handle.endpoint).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"name": ""},
        {"name": "../escape"},
        {"name": "a/b"},
        {"name": ".hidden"},
        {"name": "ok", "vcpus": 0},
        {"name": "ok", "vcpus": -2},
        {"name": "ok", "memory_mib": 15},
        {"name": "ok", "memory_mib": 0},
    ],
)
def test_vmspec_rejects_bad_names_vcpus_and_memory(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VmSpec(**fields)  # type: ignore[arg-type]


def test_vmspec_is_frozen_and_keeps_its_own_copy_of_env() -> None:
    env = {"A": "1"}
    spec = VmSpec(name="sbx-1", vcpus=2, memory_mib=256, image=("true",), env=env)
    env["A"] = "changed"

    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.vcpus = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]
    assert dict(spec.env) == {"A": "1"}


def test_make_driver_picks_the_process_backend_and_refuses_unknown_ones(tmp_path: Path) -> None:
    drv = make_driver("process", state_dir=tmp_path, isolation="none")
    assert isinstance(drv, ProcessDriver)
    assert isinstance(drv, Driver)
    with pytest.raises(BackendUnavailable):
        make_driver("no-such-backend", state_dir=tmp_path)


def test_the_real_agent_runtime_runs_as_a_sandbox(driver: ProcessDriver) -> None:
    spec = VmSpec(
        name="agent-1",
        image=(sys.executable, "-m", "agents.runtime"),
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "AGENT_ID": "agent-1",
            "AGENT_GATEWAY_URL": "http://127.0.0.1:9",
        },
    )
    handle = driver.start(driver.create(spec))

    response = _wait_reachable(f"{handle.endpoint}/health", timeout=10)

    health = response.json()
    assert {k: health[k] for k in ("status", "agent_id")} == {"status": "ok", "agent_id": "agent-1"}
    assert health["version"] and health["timestamp"]
    started = time.monotonic()
    driver.stop("agent-1", timeout=5)
    assert time.monotonic() - started < 4  # it exits on SIGTERM, without needing SIGKILL
    assert driver.status("agent-1").state is VmState.EXITED
