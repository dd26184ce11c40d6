"""``python -m console.launch`` (what ``make run`` runs): the whole console on one machine.

Prepares local state (a secret key, the database, an operator account), then runs together,
until Ctrl-C stops them all:

* web: daphne, on ``PORT``: the pages, the APIs and the WebSockets;
* gateway: uvicorn (uvloop, httptools) on ``GATEWAY_PORT``, the port agents send their calls to
  Claude through (``GATEWAY_URL``). Every call pays for the server's HTTP handling, and uvicorn's
  costs a fraction of daphne's; the same routes are served on ``PORT`` too, for anyone else;
* worker and beat: Celery.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from honcho.manager import Manager

BASE_DIR = Path(__file__).resolve().parent.parent
# What honcho returns after SIGINT (Ctrl-C) or SIGTERM: a requested stop, not a failure.
_STOP_SIGNAL_CODES = {130, 143}


def _var_dir() -> Path:
    path = Path(os.environ.get("CONSOLE_VAR_DIR", BASE_DIR / "var"))
    path = path if path.is_absolute() else BASE_DIR / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def _local_environment(var: Path) -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("SECRET_KEY") and not env.get("SECRET_KEY_FILE"):
        key_file = var / "secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        env["SECRET_KEY_FILE"] = str(key_file)
    # Served over plain HTTP on loopback: cookies must not demand HTTPS.
    env.setdefault("SESSION_COOKIE_SECURE", "false")
    env.setdefault("CSRF_COOKIE_SECURE", "false")
    env["CONSOLE_VAR_DIR"] = str(var)
    # Every process writes its metrics here, so /metrics shows all of them together.
    metrics_dir = var / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["DJANGO_SETTINGS_MODULE"] = "console.settings"
    env.setdefault("PYTHONUNBUFFERED", "1")  # each process's lines shown as they are written
    return env


def gateway_command(host: str, port: int | str) -> list[str]:
    """The gateway process: the console's HTTP routes (no WebSockets) on uvicorn's fastest
    loop and parser. No access log: the usage ledger records every call, with its request id."""
    return [
        *("-m", "uvicorn", "console.asgi:gateway_application"),
        *("--host", host, "--port", str(port), "--loop", "uvloop", "--http", "httptools"),
        *("--ws", "none", "--lifespan", "off", "--no-access-log"),
        *("--timeout-graceful-shutdown", "5"),
    ]


def _loopback_if_any(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


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


def main() -> int:
    var = _var_dir()
    env = _local_environment(var)
    host = env.get("HOST", "127.0.0.1")
    port = env.get("PORT", "8000")
    gateway_port = env.get("GATEWAY_PORT", str(int(port) + 1))
    gateway_url = f"http://{_loopback_if_any(host)}:{gateway_port}/gateway"
    env.setdefault("GATEWAY_URL", gateway_url)
    try:
        _manage(env, "migrate", "--no-input", "-v", "0")
        _manage(env, "collectstatic", "--no-input", "-v", "0")
        _manage(env, "ensure_operator")
        _build_guest(env, var)
    except subprocess.CalledProcessError as exc:
        print(f"Start-up failed: {' '.join(exc.cmd[1:])} exited with {exc.returncode}.")
        return 1
    python = sys.executable
    manager = Manager()
    # In JSON, the console logs each request itself (with its request id): daphne's plain
    # access log would only repeat it.
    quiet = " -v 0" if env.get("LOG_FORMAT") == "json" else ""
    manager.add_process(
        "web",
        f"{python} -m daphne{quiet} -b {host} -p {port} console.asgi:application",
        env=env,
        cwd=str(BASE_DIR),
    )
    manager.add_process(
        "gateway",
        " ".join([python, *gateway_command(host, gateway_port)]),
        env=env,
        cwd=str(BASE_DIR),
    )
    manager.add_process(
        "worker",
        f"{python} -m celery -A console worker --loglevel INFO --concurrency 2 "
        f"--hostname worker@%h",
        env=env,
        cwd=str(BASE_DIR),
    )
    manager.add_process(
        "beat",
        f"{python} -m celery -A console beat --loglevel INFO "
        f"--schedule {var / 'celerybeat-schedule'}",
        env=env,
        cwd=str(BASE_DIR),
    )
    print(
        f"\nAgent Console: open http://{host}:{port}/ (admin at http://{host}:{port}/admin/). "
        f"Agents reach Claude through the gateway at {env['GATEWAY_URL']}. "
        "Ctrl-C stops web, gateway, worker and beat.\n",
        flush=True,
    )
    manager.loop()
    if manager.returncode in _STOP_SIGNAL_CODES:
        print("Agent Console stopped.", flush=True)
        return 0
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
