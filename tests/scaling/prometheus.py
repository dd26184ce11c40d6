"""A small HTTP server on loopback that answers Prometheus' instant query API
(``GET /api/v1/query?query=...``) in its JSON shape, from the series it is given: enough of
Prometheus for the autoscaler's reads, spoken over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakePrometheus:
    """``series[query]``: ``{pool: value}`` answered for that query; ``status`` and ``body``
    override the answer (an error status, a body that is not Prometheus')."""

    url: str = ""
    series: dict[str, dict[str, float | str]] = field(default_factory=dict)
    status: int = 200
    body: bytes | None = None
    delay: float = 0.0
    queries: list[str] = field(default_factory=list)

    def answer(self, query: str) -> tuple[int, bytes]:
        self.queries.append(query)
        if self.delay:
            time.sleep(self.delay)
        if self.body is not None:
            return self.status, self.body
        if self.status != 200:
            error = {"status": "error", "errorType": "internal", "error": "query failed"}
            return self.status, json.dumps(error).encode()
        if query not in self.series:
            error = {"status": "error", "errorType": "bad_data", "error": f"unknown {query!r}"}
            return 400, json.dumps(error).encode()
        now = time.time()
        result = [
            {"metric": {"pool": pool} if pool else {}, "value": [now, str(value)]}
            for pool, value in self.series[query].items()
        ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return 200, json.dumps(body).encode()


@contextmanager
def serve() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/api/v1/query":
                status, body = 404, b"404 page not found"
            else:
                query = parse_qs(parts.query).get("query", [""])[0]
                status, body = fake.answer(query)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
