"""Real Celery workers for tests, each serving one sandbox host on the test's database, and the
hosts' agent relays."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

from config import broker
from tests.polling import eventually
from tests.servers import listens, server_start

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Worker:
    """A ``celery worker`` process serving the sandbox host ``name``."""

    name: str
    state_dir: Path
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, as a crash would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the worker only, as ``make run`` does: it shuts down warm, then its pool."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@functools.cache
def _workers_tmp() -> Path:
    """The workers' temporary folder, removed when the tests end: a worker killed as a crash
    would be cannot clean up its own (multiprocessing's ``pymp-*``, its sandboxes' sockets).
    Short, for socket paths; one for all, so a worker started again finds its sandboxes."""
    path = Path(tempfile.mkdtemp(prefix="acw-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def start_worker(name: str, tmp_path: Path, *, vcpus: int, **env: str) -> Worker:
    state_dir = tmp_path / f"sandboxes-{name}"
    log = tmp_path / f"worker-{name}.log"
    environment = {k: v for k, v in os.environ.items() if k != "CELERY_TASK_ALWAYS_EAGER"}
    environment |= {
        "DATABASE_URL": _database_url(),
        "CONSOLE_VAR_DIR": str(settings.VAR_DIR),
        "SANDBOX_HOST_NAME": name,
        "SANDBOX_HOST_VCPUS": str(vcpus),
        "SANDBOX_STATE_DIR": str(state_dir),
        "GATEWAY_URL": settings.GATEWAY_URL,
        "TMPDIR": str(_workers_tmp()),
    } | env
    command = [
        *(sys.executable, "-m", "celery", "-A", "config", "worker"),
        *("--loglevel", "INFO", "--concurrency", "1", "--hostname", f"{name}@%h"),
        *("--without-heartbeat", "--without-mingle", "--without-gossip"),
    ]
    # Not waited for here: its callers wait for what they need of it (its host online).
    proc = server_start(command, log=log, env=environment).process
    return Worker(name, state_dir, proc, log)


RELAY_KEY = "tests-relay-key-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Relay:
    """A ``manage.py sandbox_relay`` process serving the sandbox host ``name``, at ``url``."""

    url: str
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_relay(
    name: str, state_dir: Path, tmp_path: Path, *, env: dict[str, str] | None = None
) -> Relay:
    """The agent relay of the host ``name`` whose sandboxes are in ``state_dir``, listening on a
    free loopback port once this returns, with the key ``RELAY_KEY`` (and ``env`` besides)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    log = tmp_path / f"relay-{name}.log"
    environment = (
        dict(os.environ)
        | {
            "DATABASE_URL": _database_url(),
            "CONSOLE_VAR_DIR": str(settings.VAR_DIR),
            "SANDBOX_HOST_NAME": name,
            "SANDBOX_STATE_DIR": str(state_dir),
            "SANDBOX_RELAY_KEY": RELAY_KEY,
            "SANDBOX_RELAY_LISTEN": f"127.0.0.1:{port}",
            "SANDBOX_RELAY_URL": f"http://127.0.0.1:{port}",
        }
        | (env or {})
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "sandbox_relay"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    relay = Relay(f"http://127.0.0.1:{port}", proc, log)
    eventually(lambda: listens(port) or proc.poll() is not None, timeout=30)
    if proc.poll() is not None or not listens(port):
        relay.stop()
        raise RuntimeError(f"the relay did not start:\n{relay.output()[-3000:]}")
    return relay


@contextlib.contextmanager
def embedded_broker(var_dir: Path) -> Iterator[str]:
    """The private Redis server ``make run`` starts as its broker, for the block; its URL."""
    if problem := broker.server_problem():
        raise RuntimeError(problem)
    server = subprocess.Popen(
        broker.server_command(var_dir), stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if not broker.wait_answers(broker.embedded_socket(var_dir), timeout=15):
            raise RuntimeError("the embedded broker did not answer")
        yield broker.embedded_url(var_dir)
    finally:
        server.terminate()
        server.wait(timeout=10)
        broker.socket_folder_remove(var_dir)


def wait_for(predicate, timeout: float, what, *workers: Worker):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is truthy; on time-out, fail with the workers' log tails."""

    def timed_out() -> str:
        logs = "\n".join(f"--- {w.name} ---\n{w.output()[-3000:]}" for w in workers)
        return f"timed out waiting for {what}\n{logs}"

    return eventually(predicate, timeout, every=0.05, failing=timed_out)
