"""Status lines carry their reason phrase (``HTTP/1.1 429 Too Many Requests``) from both servers
the console runs: daphne (web) and uvicorn (gateway), over a real socket."""

from __future__ import annotations

import http
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.servers import free_port, serving

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.plumbing.status_app:application"
# Statuses the console sends that Twisted's own table lacked, and a few it always had.
STATUSES = (429, 422, 431, 451, 503, 200, 405)


def _status_line(port: int, status: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /{status} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return sock.makefile("rb").readline().decode("latin-1").rstrip("\r\n")


def _env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "true",
        "SECRET_KEY": "status-line-test",
        "CONSOLE_VAR_DIR": str(tmp_path),
    }


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", APP], id="daphne"),
        pytest.param(
            [
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--http",
                "httptools",
                APP,
            ],
            id="uvicorn",
        ),
    ],
)
def test_every_status_line_has_its_reason_phrase(server, tmp_path):
    port = free_port()
    command = [sys.executable, *(part.format(port=port) for part in server)]
    with serving(command, log=tmp_path / "server.log", env=_env(tmp_path), port=port):
        for status in STATUSES:
            phrase = http.HTTPStatus(status).phrase
            assert _status_line(port, status) == f"HTTP/1.1 {status} {phrase}"
