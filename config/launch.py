"""``python -m config.launch`` (what ``make run`` runs): the whole console on one machine.

Prepares local state (a secret key and an agent relay key, the database, an operator account),
then runs together, until Ctrl-C (or SIGTERM) stops them all (agents' sandboxes keep running,
and the next start serves them again):

* broker: without ``REDIS_URL``, a private Redis server on a socket under ``var/``: the Celery
  broker, and beat's schedule (``config.broker``);
* web: daphne (on uvloop, ``config.web``), on ``PORT``: the pages, the APIs and the WebSockets;
* gateway: uvicorn (uvloop, httptools) on ``GATEWAY_PORT``, the port agents send their calls to
  Claude through (``GATEWAY_URL``). Every call pays for the server's HTTP handling, and uvicorn's
  costs a fraction of daphne's; the same routes are served on ``PORT`` too, for anyone else;
* worker and beat: Celery;
* relay: with ``SANDBOX_RELAY_URL``, this host's agent relay (``manage.py sandbox_relay``); on
  one machine there is none, and the console dials its agents directly.

A process that dies is started again after a pause that doubles with each quick death (1 s up
to 30 s), and the others keep running.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from honcho.colour import get_colours
from honcho.printer import Message, Printer

from config import broker

BASE_DIR = Path(__file__).resolve().parent.parent


@dataclass
class _Child:
    name: str
    argv: list[str]
    colour: str | None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0  # deaths in a row, each soon after its start
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Runs processes, each in its own session, and prints their lines as honcho does (time,
    name, ``|``). One that dies is restarted after a backoff while the others run on; SIGINT or
    SIGTERM stops them all, the ``last`` ones after the rest."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        cwd: Path,
        output: IO[str] = sys.stdout,
        backoff: tuple[float, float] = (1.0, 30.0),
        stable_after: float = 30.0,
        stop_wait: float = 10.0,
        last: tuple[str, ...] = (),
    ) -> None:
        self.env, self.cwd = env, cwd
        self.first_delay, self.max_delay = backoff
        self.stable_after, self.stop_wait, self.last = stable_after, stop_wait, last
        self._printer = Printer(output, width=len("system"))
        self._colours = get_colours()
        self._lines: queue.Queue[Message] = queue.Queue()
        self._children: dict[str, _Child] = {}
        self._signals = 0
        self._signal_name = ""

    def add(self, name: str, argv: list[str]) -> None:
        self._children[name] = _Child(name, argv, next(self._colours))
        self._printer.width = max(self._printer.width, len(name))

    def start(self, name: str) -> None:
        child = self._children[name]
        child.proc = subprocess.Popen(
            child.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children
        )
        child.started, child.restart_at = time.monotonic(), None
        threading.Thread(target=self._read, args=(child, child.proc), daemon=True).start()
        again = f", restart {child.restarts}" if child.restarts else ""
        self.say(f"{name} started (pid={child.proc.pid}{again})")

    def say(self, text: str) -> None:
        self._lines.put(Message("line", text, datetime.datetime.now(), "system", None))

    def run(self) -> int:
        """Start every process not started yet and supervise them all until a signal; 0 then."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for name, child in self._children.items():
            if child.proc is None:
                self.start(name)
        while not self._signals:
            self._print_lines(0.1)
            self._watch()
        self.say(f"{self._signal_name} received: stopping every process")
        self._stop_all()
        return 0

    def stop_now(self) -> None:
        """Stop every process started so far, as a signal would."""
        self._signals += 1
        self._stop_all()

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only flags and kill(2) here: the main loop may be inside the line queue's lock.
        self._signals += 1
        self._signal_name = signal.Signals(signum).name
        if self._signals > 1:  # asked twice: no more waiting
            for child in self._children.values():
                if _alive(child):
                    self._kill_group(child, signal.SIGKILL)

    def _read(self, child: _Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            now = datetime.datetime.now()
            self._lines.put(Message("line", line, now, child.name, child.colour))
        proc.stdout.close()

    def _print_lines(self, wait: float) -> None:
        with contextlib.suppress(queue.Empty):
            self._printer.write(self._lines.get(timeout=wait))
            while True:
                self._printer.write(self._lines.get_nowait())

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self._children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    try:
                        self.start(child.name)
                    except OSError as exc:  # e.g. its program was removed: try again later
                        self.say(f"{child.name} could not be started: {exc}")
                        child.restart_at = now + self.max_delay
                continue
            if child.proc is None or (code := child.proc.poll()) is None:
                continue
            self._kill_group(child, signal.SIGKILL)  # what it leaves behind (pool processes)
            ran = now - child.started
            child.quick_deaths = child.quick_deaths + 1 if ran < self.stable_after else 1
            delay = min(self.max_delay, self.first_delay * 2 ** (child.quick_deaths - 1))
            child.restart_at = now + delay
            at = (datetime.datetime.now() + datetime.timedelta(seconds=delay)).strftime("%H:%M:%S")
            self.say(
                f"{child.name} died (exit code {_exit_code(code)}) after {ran:.1f} s; "
                f"restarting it in {delay:g} s, at {at}"
            )

    def _stop_all(self) -> None:
        first = [c for c in self._children.values() if c.name not in self.last]
        for group in (first, [c for c in self._children.values() if c.name in self.last]):
            running = [c for c in group if _alive(c)]
            for child in running:
                self.say(f"sending SIGTERM to {child.name} (pid {child.proc.pid})")
                # To the process only, not its group: it stops its own children in order.
                # Celery's worker, so signalled, shuts down warm; its pool processes, signalled
                # too, would die under it, and it would log each as an ERROR.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_wait
            while time.monotonic() < deadline and any(_alive(c) for c in running):
                self._print_lines(0.1)
            for child in running:
                if _alive(child):
                    self.say(f"{child.name} did not stop in {self.stop_wait:g} s: SIGKILL")
                self._kill_group(child, signal.SIGKILL)  # and whatever it left running
                child.proc.wait()
                self.say(f"{child.name} stopped (exit code {_exit_code(child.proc.returncode)})")
        self._print_lines(0.1)

    @staticmethod
    def _kill_group(child: _Child, signum: int) -> None:
        if child.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signum)


def _alive(child: _Child) -> bool:
    return child.proc is not None and child.proc.poll() is None


def _exit_code(code: int) -> str:
    """``1``, or ``-9, SIGKILL`` for a process a signal ended."""
    if code >= 0:
        return str(code)
    try:
        return f"{code}, {signal.Signals(-code).name}"
    except ValueError:
        return str(code)


def _var_dir() -> Path:
    path = Path(os.environ.get("CONSOLE_VAR_DIR", BASE_DIR / "var"))
    path = path if path.is_absolute() else BASE_DIR / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_keys(env: MutableMapping[str, str], var: Path) -> None:
    """Points ``env`` at this machine's secret and relay keys in ``var`` (made on first use),
    unless it names its own."""
    for name, file_name in (("SECRET_KEY", "secret_key"), ("SANDBOX_RELAY_KEY", "relay_key")):
        if not env.get(name) and not env.get(f"{name}_FILE"):
            key_file = var / file_name
            if not key_file.exists():
                key_file.write_text(secrets.token_urlsafe(50))
                key_file.chmod(0o600)
            env[f"{name}_FILE"] = str(key_file)


def local_environment(var: Path) -> dict[str, str]:
    """The environment of every process ``make run`` starts: this one's, with its keys in
    ``var``, a fresh multiprocess metrics folder there, and its settings for loopback."""
    env = dict(os.environ)
    local_keys(env, var)
    # Served over plain HTTP on loopback: cookies must not demand HTTPS.
    env.setdefault("SESSION_COOKIE_SECURE", "false")
    env.setdefault("CSRF_COOKIE_SECURE", "false")
    env["CONSOLE_VAR_DIR"] = str(var)
    # Every process writes its metrics here, so /metrics shows all of them together.
    metrics_dir = var / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.setdefault("PYTHONUNBUFFERED", "1")  # each process's lines shown as they are written
    return env


def gateway_command(host: str, port: int | str) -> list[str]:
    """The gateway process: the console's HTTP routes (no WebSockets) on uvicorn's fastest
    loop and parser. No access log: the usage ledger records every call, with its request id."""
    return [
        *("-m", "uvicorn", "config.asgi:gateway_application"),
        *("--host", host, "--port", str(port), "--loop", "uvloop", "--http", "httptools"),
        *("--ws", "none", "--lifespan", "off", "--no-access-log"),
        *("--timeout-graceful-shutdown", "5"),
    ]


def web_command(host: str, port: int | str, *, quiet: bool = False) -> list[str]:
    """The web process: daphne on uvloop (``config.web``), serving ``config.asgi``; ``quiet``
    without daphne's access log."""
    return [
        *("-m", "config.web", *(("-v", "0") if quiet else ())),
        *("-b", host, "-p", str(port), "config.asgi:application"),
    ]


def _loopback_if_any(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def _manage(env: dict[str, str], *args: str) -> None:
    # Django's own entry point (settings from ``env``): no manage.py needed, as in a wheel.
    subprocess.run([sys.executable, "-m", "django", *args], cwd=BASE_DIR, env=env, check=True)


def _build_guest(env: dict[str, str], var: Path) -> None:
    """On a qemu host, build the microVM guest image (cached: a no-op while its recipe holds)."""
    if env.get("SANDBOX_BACKEND", "process") != "qemu":
        return
    guest_dir = env.get("SANDBOX_GUEST_DIR", str(var / "guest"))
    print(f"Building the microVM guest image in {guest_dir} (cached after the first time)…")
    subprocess.run(
        [sys.executable, "-m", "vmdriver.guest.build", "--out", guest_dir],
        cwd=BASE_DIR,
        env=env,
        check=True,
    )


def _embedded_broker(env: dict[str, str], var: Path) -> list[str] | None:
    """The private broker's command, with ``env`` pointed at it; None when ``REDIS_URL`` (or
    ``CELERY_BROKER_URL``) names one already."""
    if env.get("REDIS_URL") or env.get("CELERY_BROKER_URL"):
        return None
    if problem := broker.server_problem():
        raise RuntimeError(f"{problem}; or set REDIS_URL to a Redis server of your own")
    env["CELERY_BROKER_URL"] = broker.embedded_url(var)
    return broker.server_command(var)


def main() -> int:
    var = _var_dir()
    env = local_environment(var)
    host = env.get("HOST", "127.0.0.1")
    port = env.get("PORT", "8000")
    gateway_port = env.get("GATEWAY_PORT", str(int(port) + 1))
    gateway_url = f"http://{_loopback_if_any(host)}:{gateway_port}/gateway"
    env.setdefault("GATEWAY_URL", gateway_url)
    broker_command: list[str] | None = None
    try:
        try:
            broker_command = _embedded_broker(env, var)
            _manage(env, "migrate", "--no-input", "-v", "0")
            _manage(env, "collectstatic", "--no-input", "-v", "0")
            _manage(env, "ensure_operator")
            _build_guest(env, var)
        except subprocess.CalledProcessError as exc:
            print(f"Start-up failed: {' '.join(exc.cmd[1:])} exited with {exc.returncode}.")
            return 1
        except RuntimeError as exc:
            print(f"Start-up failed: {exc}.")
            return 1
        return _supervise(env, var, host, port, gateway_port, broker_command)
    finally:
        if broker_command is not None:
            broker.socket_folder_remove(var)


def _supervise(
    env: dict[str, str],
    var: Path,
    host: str,
    port: str,
    gateway_port: str,
    broker_command: list[str] | None,
) -> int:
    python = sys.executable
    supervisor = Supervisor(env=env, cwd=BASE_DIR, last=("broker",))
    if broker_command is not None:
        # Before the others, which publish to it from their first request.
        supervisor.add("broker", broker_command)
        supervisor.start("broker")
        try:
            answers = broker.wait_answers(broker.embedded_socket(var), timeout=15)
        except KeyboardInterrupt:
            answers = False
        if not answers:
            print("Start-up failed: the broker (redis-server) did not answer.", flush=True)
            supervisor.stop_now()
            return 1
    # In JSON, the console logs each request itself (with its request id): daphne's plain
    # access log would only repeat it.
    quiet = env.get("LOG_FORMAT") == "json"
    supervisor.add("web", [python, *web_command(host, port, quiet=quiet)])
    supervisor.add("gateway", [python, *gateway_command(host, gateway_port)])
    celery = [python, "-m", "celery", "-A", "config"]
    supervisor.add(
        "worker",
        [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2", "--hostname", "worker@%h"],
    )
    if env.get("SANDBOX_RELAY_URL"):  # this host's agents served to other machines
        supervisor.add("relay", [python, "-m", "django", "sandbox_relay"])
    supervisor.add(
        "beat",
        [*celery, "beat", "--loglevel", "INFO"],
    )
    print(
        f"\nAgent Console: open http://{host}:{port}/ (admin at http://{host}:{port}/admin/). "
        f"Agents reach Claude through the gateway at {env['GATEWAY_URL']}. "
        "A process that dies is restarted; Ctrl-C stops them all, but not the agents' "
        "sandboxes (`manage.py agents_stop_all`, or `agent-console agents-stop-all`, stops "
        "those).\n",
        flush=True,
    )
    supervisor.run()
    print("Agent Console stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
