"""What bubblewrap adds to the ``process`` backend: namespaces, a read-only system, a private
workspace, no network but the gateway channel, cgroup limits, and death with the supervisor.

Like ``test_process_driver.py`` these need neither Django nor the shared fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from tests.polling import eventually
from vmdriver import BackendUnavailable, VmHandle, VmSpec, VmState
from vmdriver.isolation import bwrap_problem
from vmdriver.process import ProcessDriver

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=str(bwrap_problem()))

# Runs a few probes inside the sandbox, prints them as JSON, then serves GET / on SANDBOX_LISTEN.
PROBE = r"""
import json, os, socket, socketserver, http.server, urllib.request
def attempt(action):
    try:
        return "ok: " + str(action())
    except Exception as exc:
        return "refused: " + type(exc).__name__
def tcp_out():
    socket.create_connection(("127.0.0.1", int(os.environ["HOST_PORT"])), timeout=2).close()
    return "connected"
def via_gateway():
    path = os.environ["SANDBOX_GATEWAY"].removeprefix("unix:")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(b"GET /hello HTTP/1.0\r\nHost: gateway\r\n\r\n")
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer.decode().split("\r\n\r\n", 1)[1]
probes = {
    "pid": os.getpid(),
    "hostname": socket.gethostname(),
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "tcp_out": attempt(tcp_out),
    "gateway": attempt(via_gateway),
    "write_usr": attempt(lambda: open("/usr/sandbox-was-here", "w")),
    "write_workspace": attempt(lambda: open("/workspace/notes.txt", "w").write("mine")),
    "read_host_secret": attempt(lambda: open(os.environ["HOST_SECRET"]).read()),
    "env_keys": sorted(os.environ),
}
print("PROBES " + json.dumps(probes), flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args): pass
    def address_string(self): return "sandbox"
class Server(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("sandbox", 0)
Server(os.environ["SANDBOX_LISTEN"][5:], Handler).serve_forever()
"""


class _Host(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "13")
        self.end_headers()
        self.wfile.write(b"from the host")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's loopback: the sandbox's gateway, or a forbidden target."""
    server = HTTPServer(("127.0.0.1", 0), _Host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[ProcessDriver]:
    python = [(p, p) for p in sorted({sys.base_prefix, sys.prefix})]
    drv = ProcessDriver(state_dir=tmp_path / "sb", ro_binds=python)
    yield drv
    for status in drv.list():
        drv.destroy(status.id)


def _get(endpoint: str, path: str = "/") -> httpx.Response | None:
    transport = httpx.HTTPTransport(uds=endpoint.removeprefix("unix:"))
    try:
        with httpx.Client(transport=transport, base_url="http://sandbox", timeout=1) as client:
            return client.get(path)
    except httpx.HTTPError:
        return None


def _probes(driver: ProcessDriver, name: str) -> dict:
    line = eventually(
        lambda: next(
            (ln for ln in driver.logs(name).splitlines() if ln.startswith("PROBES ")), None
        ),
        10,
        failing="timed out waiting for PROBES",
    )
    return json.loads(str(line).removeprefix("PROBES "))


def _start(driver: ProcessDriver, tmp_path: Path, host_port: int, **spec: object) -> VmHandle:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("the host's secret")
    env = {"HOST_PORT": str(host_port), "HOST_SECRET": str(secret)}
    fields = {"name": "sbx", "image": (sys.executable, "-c", PROBE), "env": env} | spec
    handle = driver.start(driver.create(VmSpec(**fields)))  # type: ignore[arg-type]
    eventually(lambda: _get(handle.endpoint), 10, failing="the sandbox never answered")
    return handle


def test_the_sandbox_has_its_own_namespaces_and_a_read_only_system(driver, tmp_path, host_server):
    handle = _start(driver, tmp_path, host_server, gateway=f"http://127.0.0.1:{host_server}/")
    assert handle.endpoint.startswith("unix:")
    probes = _probes(driver, "sbx")
    assert probes["pid"] < 10  # its own PID namespace
    assert probes["hostname"] == "sandbox"  # its own UTS namespace
    assert probes["uid"] == 1000
    assert probes["cwd"] == "/workspace"
    assert probes["write_usr"].startswith("refused")
    assert probes["write_workspace"].startswith("ok")
    assert (driver.state_dir / "sbx" / "workspace" / "notes.txt").read_text() == "mine"
    assert probes["read_host_secret"].startswith("refused")  # only bound paths are visible


def test_the_only_way_out_is_the_gateway_channel(driver, tmp_path, host_server):
    _start(driver, tmp_path, host_server, gateway=f"http://127.0.0.1:{host_server}/gateway")
    probes = _probes(driver, "sbx")
    assert probes["interfaces"] == ["lo"]  # its own network namespace: no route anywhere
    assert probes["tcp_out"].startswith("refused")
    assert probes["gateway"] == "ok: from the host"
    assert not any("KEY" in key or "TOKEN" in key for key in probes["env_keys"])


def test_without_a_gateway_there_is_no_way_out_at_all(driver, tmp_path, host_server):
    _start(driver, tmp_path, host_server)
    probes = _probes(driver, "sbx")
    assert probes["tcp_out"].startswith("refused")
    assert probes["gateway"].startswith("refused")


def test_memory_processes_and_cpu_are_limited_by_the_spec(driver, tmp_path, host_server):
    handle = _start(driver, tmp_path, host_server, memory_mib=300, vcpus=2)
    cgroups = Path(f"/proc/{handle.pid}/task/{handle.pid}/children").read_text().split()
    bwrap_pid = int(cgroups[0])
    groups = dict(
        line.split(":", 2)[1:]
        for line in Path(f"/proc/{bwrap_pid}/cgroup").read_text().splitlines()
    )
    memory = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
    pids = Path("/sys/fs/cgroup/pids") / groups["pids"].lstrip("/")
    assert memory.name == "sbx" and pids.name == "sbx"
    assert int((memory / "memory.limit_in_bytes").read_text()) == 300 * 1024 * 1024
    assert int((pids / "pids.max").read_text()) == 256


def test_a_fork_bomb_is_stopped_by_the_process_limit(driver, tmp_path, host_server):
    bomb = (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n"
        "    print('FORKS', n, type(e).__name__, flush=True)\n"
    )
    driver.start(driver.create(VmSpec(name="bomb", image=(sys.executable, "-c", bomb))))
    line = eventually(
        lambda: next(
            (ln for ln in driver.logs("bomb").splitlines() if ln.startswith("FORKS")), None
        ),
        20,
        failing="timed out waiting for FORKS",
    )
    assert int(str(line).split()[1]) < 256


def test_the_sandbox_dies_with_its_supervisor(driver, tmp_path, host_server):
    handle = _start(driver, tmp_path, host_server)
    assert handle.pid is not None
    children = Path(f"/proc/{handle.pid}/task/{handle.pid}/children").read_text().split()
    os.kill(handle.pid, signal.SIGKILL)
    for child in children:
        eventually(lambda c=child: _dead(c), 10, failing=f"{child} is alive")
    assert driver.status("sbx").state is VmState.EXITED


def _dead(pid: str) -> bool:
    """Gone, or a zombie; a process that vanishes while its stat is read is gone too."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:  # FileNotFoundError, or ProcessLookupError mid-read
        return True


def test_stop_ends_the_sandbox_and_destroy_removes_its_state(driver, tmp_path, host_server):
    handle = _start(driver, tmp_path, host_server)
    driver.stop("sbx")
    assert _get(handle.endpoint) is None
    assert driver.status("sbx").state is VmState.EXITED
    driver.destroy("sbx")
    assert not (driver.state_dir / "sbx").exists()
    assert not handle.endpoint.removeprefix("unix:").startswith(str(driver.state_dir))
    assert not Path(handle.endpoint.removeprefix("unix:")).parent.exists()


def test_a_sandbox_whose_starter_died_before_recording_it_is_found_and_destroyed(
    driver, tmp_path, host_server
):
    # As if its worker were killed right after starting the supervisor: nothing but the
    # supervisor itself says which process the sandbox is.
    env = {"HOST_PORT": str(host_server), "HOST_SECRET": str(tmp_path / "none")}
    handle = driver.create(VmSpec(name="sbx", image=(sys.executable, "-c", PROBE), env=env))
    path = driver.state_dir / handle.id
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmdriver.supervisor", str(path)],
        cwd=path / "workspace",
        env={"PATH": os.environ["PATH"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        status = eventually(lambda: (s := driver.status("sbx")).state is VmState.RUNNING and s, 10)
        assert status.pid == proc.pid
        assert driver.start(handle).pid == proc.pid  # booting it again keeps it
        driver.destroy("sbx")
        assert proc.wait(timeout=10) is not None
        assert not path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_agent_runtime_runs_sandboxed(tmp_path, host_server):
    runtime = REPO_ROOT / "agents" / "runtime"
    shared = REPO_ROOT / "wire"  # the framework-free modules the runtime imports
    readable = {sys.base_prefix, sys.prefix, str(runtime), str(runtime.parent / "__init__.py")}
    binds = [(p, p) for p in sorted(readable | {str(shared)})]
    drv = ProcessDriver(state_dir=tmp_path / "sb", ro_binds=binds)
    try:
        spec = VmSpec(
            name="agent",
            image=(sys.executable, "-m", "agents.runtime"),
            env={
                "PYTHONPATH": str(REPO_ROOT),
                "AGENT_ID": "a1",
                "AGENT_GATEWAY_URL": f"http://127.0.0.1:{host_server}",
            },
            gateway=f"http://127.0.0.1:{host_server}",
        )
        handle = drv.start(drv.create(spec))
        response = eventually(lambda: _get(handle.endpoint, "/health"), 10, failing="no /health")
        health = response.json()  # type: ignore[union-attr]
        assert {k: health[k] for k in ("status", "agent_id")} == {"status": "ok", "agent_id": "a1"}
        assert health["version"] and health["timestamp"]
    finally:
        drv.destroy("agent")


def test_without_bubblewrap_the_backend_refuses_unless_allowed(tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\nfrom vmdriver import BackendUnavailable\n"
        "from vmdriver.process import ProcessDriver\n"
        "try:\n    ProcessDriver(state_dir=Path(sys.argv[1]) / 'a')\n"
        "except BackendUnavailable as exc:\n    print('REFUSED', exc)\n"
        "ProcessDriver(state_dir=Path(sys.argv[1]) / 'b', isolation='none')\n"
        "print('ALLOWED')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO_ROOT,
        env={"PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "REFUSED bubblewrap (bwrap) is not installed" in result.stdout
    assert "ALLOWED" in result.stdout


def test_an_unknown_isolation_is_refused(tmp_path):
    with pytest.raises(ValueError):
        ProcessDriver(state_dir=tmp_path, isolation="docker")
    assert BackendUnavailable  # the error a missing bubblewrap raises, exported by vmdriver


def test_an_https_gateway_without_a_port_is_reached_on_443(driver, tmp_path):
    """``GATEWAY_URL=https://console.example.com/gateway``, as behind nginx: the channel leads to
    port 443, where TLS is spoken through it (the relay passes bytes, so plain HTTP stands in)."""
    try:
        server = HTTPServer(("127.0.0.1", 443), _Host)
    except OSError as exc:
        pytest.skip(f"cannot listen on port 443 here: {exc}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _start(driver, tmp_path, 443, gateway="https://127.0.0.1/gateway")
        assert _probes(driver, "sbx")["gateway"] == "ok: from the host"
    finally:
        server.shutdown()
        server.server_close()
