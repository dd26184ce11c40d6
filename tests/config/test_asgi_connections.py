"""The web process's database connections under ASGI: a request's thread ends with it, and so
must its connection."""

from __future__ import annotations

import os

import httpx
import pytest


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_requests_leave_no_database_connection_open(asgi_server, user, api_key):
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    with httpx.Client(base_url=asgi_server, headers=headers, timeout=30) as http:
        assert http.get("/api/v1/agents").status_code == 200
        before = _open_files()
        for _ in range(60):
            assert http.get("/api/v1/agents").status_code == 200
        after = _open_files()
    # Without the close, each request's thread left its SQLite connection (2 files) open.
    assert after - before < 10, (before, after)
