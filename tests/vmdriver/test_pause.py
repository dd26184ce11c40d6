"""Pausing and resuming ``process`` sandboxes: frozen with their freezer cgroup under bubblewrap,
stopped with SIGSTOP where there is none (unsandboxed), their memory kept either way.

Like ``test_process_driver.py`` these need neither Django nor the shared fixtures.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.polling import eventually
from tests.processes import cpu_ticks, stat, tree
from vmdriver import PauseMethod, SandboxNotRunning, VmSpec, VmState
from vmdriver.isolation import bwrap_problem
from vmdriver.process import ProcessDriver

# Spins a thread (CPU time that only a pause stops) and answers GET with a number it drew at
# start and how many GETs it has answered: both live in its memory alone.
BUSY = """
import http.server, os, random, socketserver, threading
drawn = random.randrange(10**12)
answered = 0
def spin():
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global answered
        answered += 1
        body = f"{drawn} {answered}".encode()
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
if listen.startswith("unix:"):
    UnixHTTPServer(listen[5:], Handler).serve_forever()
else:
    host, port = listen[4:].rsplit(":", 1)
    http.server.HTTPServer((host, int(port)), Handler).serve_forever()
"""


def _get(endpoint: str, timeout: float = 1.0) -> str | None:
    transport = None
    if endpoint.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=endpoint.removeprefix("unix:"))
        endpoint = "http://sandbox"
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            return client.get(endpoint).text
    except httpx.HTTPError:
        return None


def _program(pid: int) -> int:
    """The sandboxed program: the deepest process of the sandbox's tree."""
    return tree(pid)[-1]


@pytest.fixture(params=["bwrap", "none"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessDriver]:
    if request.param == "bwrap" and (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    python = [(p, p) for p in sorted({sys.base_prefix, sys.prefix})]
    drv = ProcessDriver(state_dir=tmp_path / "sb", isolation=request.param, ro_binds=python)
    yield drv
    for status in drv.list():
        drv.destroy(status.id)


def _busy(driver: ProcessDriver) -> tuple[str, int]:
    handle = driver.start(driver.create(VmSpec(name="busy", image=(sys.executable, "-c", BUSY))))
    assert handle.pid is not None
    first = eventually(lambda: _get(handle.endpoint), 10, failing="the sandbox never answered")
    return str(first), handle.pid


def test_a_paused_sandbox_uses_no_cpu_keeps_its_memory_and_continues_when_resumed(driver):
    first, leader = _busy(driver)
    drawn = first.split()[0]
    program = _program(leader)
    before = cpu_ticks(program)
    time.sleep(0.5)
    assert cpu_ticks(program) > before, "the busy loop should use CPU while it runs"

    method = driver.pause("busy")

    status = driver.status("busy")
    assert status.state is VmState.PAUSED and status.paused is method
    frozen = cpu_ticks(program)
    time.sleep(1.0)
    assert cpu_ticks(program) == frozen, "a paused sandbox must not use CPU"
    assert _get(status.endpoint, timeout=0.5) is None  # it answers nothing while paused
    if driver.isolation == "bwrap" and os.access("/sys/fs/cgroup/freezer", os.W_OK):
        assert method is PauseMethod.FREEZER
        group = Path((driver.state_dir / "busy" / "freezer").read_text())
        assert (group / "freezer.state").read_text().strip() == "FROZEN"
        assert str(program) in (group / "cgroup.procs").read_text().split()
        assert stat(program)[0] == "D"  # in the freezer's wait
        assert "SIGSTOP" not in driver.logs("busy")
    else:  # no supervisor (unsandboxed), or no freezer on this host: SIGSTOP, and why
        assert method is PauseMethod.SIGSTOP
        assert all(stat(pid)[0] == "T" for pid in tree(leader))
        reason = "it runs unsandboxed" if driver.isolation == "none" else "freezer cgroup"
        assert "sandbox: paused by SIGSTOP to each of its processes: " in driver.logs("busy")
        assert reason in driver.logs("busy")
    assert driver.pause("busy") is method  # pausing again changes nothing

    handle = driver.resume("busy")

    assert driver.status("busy").state is VmState.RUNNING
    answer = eventually(lambda: _get(handle.endpoint), 5, failing="no answer after resume")
    assert str(answer).split()[0] == drawn  # the same process, its memory kept
    assert int(str(answer).split()[1]) >= 2  # it counted the GETs before the pause
    resumed = cpu_ticks(program)
    time.sleep(0.5)
    assert cpu_ticks(program) > resumed
    assert driver.resume("busy") == handle  # resuming a running sandbox changes nothing


def test_a_paused_sandbox_stops_and_is_destroyed(driver):
    _, leader = _busy(driver)
    program = _program(leader)
    driver.pause("busy")

    driver.stop("busy", timeout=5)

    assert driver.status("busy").state is VmState.EXITED
    assert not Path(f"/proc/{program}").exists() or stat(program)[0] == "Z"
    with pytest.raises(SandboxNotRunning):
        driver.pause("busy")
    with pytest.raises(SandboxNotRunning):
        driver.resume("busy")
    driver.destroy("busy")
    assert driver.list() == []
