"""deploy/nginx/: the site, rendered by its script, passes ``nginx -t``; then a real nginx on
loopback ports, with that site, stands in front of real console processes (two daphne web
processes, one uvicorn gateway, as the systemd units run them) and a dead upstream server, and
serves: pages over TLS (HTTP redirected), a sign-in and the chat WebSocket with its cookie, the
gateway's event stream as it comes, the client's address as the console's, and 413 past the
body limit. nginx comes from Debian's package (``make test`` installs it); without it these
tests skip, and fail in CI."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.urls import reverse
from websockets.sync.client import connect

from config.launch import gateway_command
from tests.conftest import PLATFORM_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.polling import eventually
from tests.servers import free_port, listens

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "deploy" / "nginx" / "render.py"
TEMPLATE = ROOT / "deploy" / "nginx" / "agent-console.conf.template"
LIMIT = 64 * 1024  # MAX_REQUEST_BYTES of the console behind the test's nginx
# nginx's temporary folders, which would default to root's /var/lib/nginx.
_TEMP = {"client_body": "body", "proxy": "proxy", "fastcgi": "fastcgi", "uwsgi": "uwsgi"}
_TEMP |= {"scgi": "scgi"}


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        reason = "nginx is not installed: scripts/system-packages.sh nginx (make test) installs it"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide nginx: {reason}")
        pytest.skip(reason)
    return found


def render(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def certificate(folder: Path, *addresses: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost, 127.0.0.1 and ``addresses``, and its
    key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *addresses)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def nginx_conf(prefix: Path, site: str) -> Path:
    """A minimal main configuration around ``site``: everything under ``prefix``."""
    (prefix / "site.conf").write_text(site)
    for folder in _TEMP.values():
        (prefix / folder).mkdir(exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers read the test's folders
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        "    default_type application/octet-stream;\n"
        f"    access_log {prefix}/access.log;\n"
        + "".join(f"    {k}_temp_path {prefix}/{v};\n" for k, v in _TEMP.items())
        + f"    include {prefix}/site.conf;\n}}\n"
    )
    return conf


def nginx_test(nginx: str, conf: Path) -> subprocess.CompletedProcess[str]:
    prefix = conf.parent
    return subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def nginx_start(nginx: str, prefix: Path, site: str, log: IO[bytes]) -> subprocess.Popen:
    """nginx in the foreground with ``site``, everything under ``prefix``."""
    conf = nginx_conf(prefix, site)
    argv = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    return subprocess.Popen([*argv, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)


# --- The site, checked -------------------------------------------------------------------------


def test_nginx_accepts_the_site_as_an_operator_renders_it(tmp_path):
    nginx = nginx_binary()
    cert, key = certificate(tmp_path)
    site = render(
        *("--server-name", "console.example.com www.console.example.com"),
        *("--web", "10.0.0.10:8001", "--web", "10.0.0.10:8002"),
        *("--gateway", "10.0.0.10:8101", "--gateway", "[fd00::10]:8102"),
        *("--certificate", str(cert), "--certificate-key", str(key)),
    )
    assert not re.search(r"\$\{[A-Z_]+\}", site)
    result = nginx_test(nginx, nginx_conf(tmp_path, site))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_refuses_a_broken_site(tmp_path):
    """The check bites: a certificate that is not there fails it."""
    nginx = nginx_binary()
    _, key = certificate(tmp_path)
    site = render(
        *("--server-name", "localhost", "--web", "127.0.0.1:1", "--gateway", "127.0.0.1:2"),
        *("--certificate", str(tmp_path / "missing.pem"), "--certificate-key", str(key)),
    )
    result = nginx_test(nginx, nginx_conf(tmp_path, site))
    assert result.returncode != 0
    assert "missing.pem" in result.stderr


def test_the_renderer_refuses_what_would_change_the_configuration():
    result = subprocess.run(
        [
            *(sys.executable, str(RENDER), "--server-name", "x; include /etc/passwd"),
            *("--web", "127.0.0.1:1", "--gateway", "127.0.0.1:2"),
            *("--certificate", "/c", "--certificate-key", "/k"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "server_name must be one word" in result.stderr


def test_the_sites_default_body_limit_is_the_consoles(settings):
    spec = importlib.util.spec_from_file_location("agent_console_nginx_render", RENDER)
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)

    assert "MAX_REQUEST_BYTES" not in os.environ
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == renderer.DEFAULT_MAX_REQUEST_BYTES


def test_the_chat_location_covers_every_chat_route():
    """The routes that answer a chat turn (as JSON or events) are those nginx does not buffer
    and gives a turn's time; no other route is."""
    pattern = re.search(r"location ~ (\^/\S+\$) \{", TEMPLATE.read_text()).group(1)
    uuid = "0b6a6f2e-7c52-4f0c-9b1e-3f0f8c1f8a10"
    chat = [
        reverse("agent-chat", kwargs={"agent_id": uuid}),
        reverse("api-session-messages", kwargs={"session_id": uuid}),
        reverse("api-execute"),
    ]
    for path in chat:
        assert re.fullmatch(pattern, path), path
    others = [reverse("api-agent-list"), reverse("chat"), f"/agents/{uuid}/health", "/ws/chat/"]
    for path in others:
        assert not re.fullmatch(pattern, path), path


def test_only_idempotent_requests_are_retried_on_another_server():
    directives = re.findall(r"^\s*proxy_next_upstream\s+([^;]*);", TEMPLATE.read_text(), re.M)
    assert directives == ["error timeout"]  # never non_idempotent: a POST is not sent twice


class _SlowEvents(BaseHTTPRequestHandler):
    """Five server-sent events, 0.3 s apart, with nothing that tells nginx not to buffer."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for number in range(5):
            data = f"event: tick\ndata: {number}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(0.3)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def _first_and_last_event(url: str, ca: ssl.SSLContext) -> tuple[float, float]:
    began, arrived = time.monotonic(), []
    with httpx.stream("GET", url, verify=ca, timeout=30) as answer:
        for line in answer.iter_lines():
            if line.startswith("event:"):
                arrived.append(time.monotonic() - began)
    assert len(arrived) == 5
    return arrived[0], arrived[-1]


def test_chat_routes_stream_events_as_they_come_where_others_are_buffered(tmp_path):
    """The site alone, in front of a stand-in web server whose events say nothing about
    buffering (the console's chat routes do not): on a chat route the first event arrives
    long before the last; elsewhere nginx holds the answer until it is complete."""
    nginx = nginx_binary()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _SlowEvents)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    cert, key = certificate(tmp_path)
    site = render(
        *("--server-name", "localhost", "--listen", "127.0.0.1"),
        *("--http-port", str(free_port()), "--https-port", str(port)),
        *("--web", f"127.0.0.1:{upstream.server_address[1]}", "--gateway", "127.0.0.1:1"),
        *("--certificate", str(cert), "--certificate-key", str(key)),
    )
    with (tmp_path / "nginx.log").open("wb") as log:
        server = nginx_start(nginx, tmp_path, site, log)
    try:
        eventually(lambda: listens(port), 30, failing="nginx is not listening")
        ca = ssl.create_default_context(cafile=str(cert))
        uuid = "0b6a6f2e-7c52-4f0c-9b1e-3f0f8c1f8a10"
        for chat in (f"/agents/{uuid}/v1/agent/chat", f"/api/v1/sessions/{uuid}/messages"):
            first, last = _first_and_last_event(f"https://localhost:{port}{chat}", ca)
            assert last - first >= 0.9, (chat, first, last)
        first, last = _first_and_last_event(f"https://localhost:{port}/api/v1/agents", ca)
        assert last - first < 0.2, (first, last)  # the check bites: buffered, all at once
    finally:
        _stop(server)
        upstream.shutdown()
        upstream.server_close()


# --- A console behind it -------------------------------------------------------------------------


@dataclass
class Proxied:
    url: str  # https://localhost:<port>
    http_url: str
    ca: ssl.SSLContext
    password: str
    key: str
    fake: FakeAnthropic
    web_ports: list[int]

    def client(self, source: str = "127.0.0.1", **kwargs) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=self.ca, local_address=source)
        return httpx.Client(base_url=self.url, transport=transport, timeout=30, **kwargs)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    nginx = nginx_binary()
    folder = tmp_path_factory.mktemp("nginx")
    https_port, http_port = free_port(), free_port()
    web_ports, gateway_port, dead_port = [free_port(), free_port()], free_port(), free_port()
    url = f"https://localhost:{https_port}"
    fake = FakeAnthropic(chunk_delay=0.25).start()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "PYTEST_CURRENT_TEST", "CELERY_BROKER_URL"}
    } | {
        # deploy/env.example's production settings, as a real deployment sets them.
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CONSOLE_VAR_DIR": str(folder / "var"),
        "SECRET_KEY": "tests-only-behind-nginx-0123456789abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "localhost",
        "CONSOLE_BASE_URL": url,
        "CSRF_TRUSTED_ORIGINS": url,
        "TRUSTED_PROXIES": "1",
        "USE_X_FORWARDED_PROTO": "true",
        "SECURE_SSL_REDIRECT": "true",
        "SESSION_COOKIE_SECURE": "true",
        "CSRF_COOKIE_SECURE": "true",
        "MAX_REQUEST_BYTES": str(LIMIT),
        "LOGIN_ATTEMPTS_PER_ADDRESS": "3",
        "ANTHROPIC_API_KEY": PLATFORM_KEY,
        "ANTHROPIC_BASE_URL": fake.base_url,
        "ANTHROPIC_MAX_RETRIES": "0",
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "WHITENOISE_USE_FINDERS": "true",
    }
    python = sys.executable

    def manage(*args: str) -> str:
        done = subprocess.run(
            [python, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--no-input", "-v", "0")
    password = re.search(r"password (\S+) \(", manage("ensure_operator")).group(1)
    key = re.search(r"\bac_\S+", manage("create_api_key", "admin")).group(0)

    processes = []
    log = (folder / "console.log").open("wb")
    for port in web_ports:  # as agent-console-web@.service runs them
        argv = [python, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
        processes.append((port, [*argv, "config.asgi:application"]))
    processes.append((gateway_port, [python, *gateway_command("127.0.0.1", gateway_port)]))
    running = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for _, argv in processes
    ]
    cert, key_file = certificate(folder)
    site = render(
        *("--server-name", "localhost", "--listen", "127.0.0.1"),
        *("--http-port", str(http_port), "--https-port", str(https_port)),
        *(arg for port in [*web_ports, dead_port] for arg in ("--web", f"127.0.0.1:{port}")),
        *("--gateway", f"127.0.0.1:{gateway_port}"),
        *("--certificate", str(cert), "--certificate-key", str(key_file)),
        *("--max-request-bytes", str(LIMIT)),
    )
    server = nginx_start(nginx, folder, site, log)
    try:
        for port, _ in processes:
            eventually(
                lambda p=port: listens(p),
                60,
                failing=f"no console process listens on port {port}",
            )
        eventually(lambda: listens(https_port), 30, failing="nginx is not listening")
        ca = ssl.create_default_context(cafile=str(cert))
        yield Proxied(url, f"http://localhost:{http_port}", ca, password, key, fake, web_ports)
    finally:
        _stop(server)
        for proc in running:
            _stop(proc)
        log.close()
        fake.stop()


def test_pages_are_served_over_tls_and_plain_http_is_redirected(proxied):
    with proxied.client() as client:
        for _ in range(6):  # every web server in turn, the dead one retried on another
            page = client.get("/accounts/login/")
            assert page.status_code == 200, page.text[:300]
            assert "csrfmiddlewaretoken" in page.text
    # SECURE_SSL_REDIRECT is on: the console knows the request came over HTTPS (X-Forwarded-Proto).
    answer = httpx.get(f"{proxied.http_url}/usage/?x=1", follow_redirects=False)
    assert answer.status_code == 301
    assert answer.headers["location"] == f"{proxied.url}/usage/?x=1"


def _sign_in(proxied: Proxied, client: httpx.Client) -> None:
    client.get("/accounts/login/")
    answer = client.post(
        "/accounts/login/",
        data={
            "username": "admin",
            "password": proxied.password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
        headers={"Referer": f"{proxied.url}/accounts/login/"},
    )
    assert answer.status_code == 302, answer.text[:500]


def test_a_signed_in_browser_opens_the_chat_socket_through_it(proxied):
    with proxied.client() as client:
        _sign_in(proxied, client)
        assert client.get("/chat/").status_code == 200
        cookie = f"sessionid={client.cookies['sessionid']}"
    wss = proxied.url.replace("https://", "wss://") + "/ws/chat/"
    headers = {"Cookie": cookie, "Origin": proxied.url}
    with connect(wss, ssl=proxied.ca, additional_headers=headers, open_timeout=10) as socket_:
        assert socket_.response.status_code == 101
        ready = json.loads(socket_.recv(timeout=10))
    assert ready["type"] == "ready"
    assert ready["user"] == "admin"


def test_the_gateways_stream_arrives_as_it_is_written(proxied):
    """The fake writes each piece 0.25 s after the last: the first must come long before the
    end, not all at once when the stream is done."""
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
    }
    headers = {"x-api-key": proxied.key, "anthropic-version": "2023-06-01"}
    with proxied.client() as client:
        began = time.monotonic()
        with client.stream("POST", "/gateway/v1/messages", json=body, headers=headers) as answer:
            assert answer.status_code == 200
            arrived = []
            for line in answer.iter_lines():
                if line.startswith("event:"):
                    arrived.append((time.monotonic() - began, line.split(":", 1)[1].strip()))
    assert arrived[-1][1] == "message_stop"
    first, last = arrived[0][0], arrived[-1][0]
    assert last - first >= 1.0, arrived


def _failed_sign_in(client: httpx.Client, username: str, **headers: str) -> int:
    answer = client.post(
        "/api/v1/auth/login", json={"username": username, "password": "wrong"}, headers=headers
    )
    return answer.status_code


def test_the_console_counts_sign_ins_by_the_address_nginx_saw(proxied):
    """LOGIN_ATTEMPTS_PER_ADDRESS is 3. Three loopback addresses stand for three clients: the
    first is refused after its third failure, however it rewrites X-Forwarded-For; the second,
    naming the first in X-Forwarded-For, is not."""
    with proxied.client("127.0.0.2") as first, proxied.client("127.0.0.3") as second:
        assert [_failed_sign_in(first, f"nobody{i}") for i in range(3)] == [401] * 3
        assert _failed_sign_in(first, "nobody9") == 429
        assert _failed_sign_in(first, "nobody8", **{"X-Forwarded-For": "198.51.100.7"}) == 429
        assert _failed_sign_in(second, "nobody7", **{"X-Forwarded-For": "127.0.0.2"}) == 401


def test_a_body_over_the_limit_is_refused_by_nginx_in_the_consoles_shape(proxied):
    headers = {"Authorization": f"Bearer {proxied.key}", "Content-Type": "application/json"}
    over = b'{"x": "' + b"a" * LIMIT + b'"}'
    with proxied.client() as client:
        refused = client.post("/api/v1/agents", content=over, headers=headers)
        assert refused.status_code == 413
        assert refused.headers["server"].startswith("nginx")
        assert refused.json()["error"]["code"] == "request_too_large"
        gateway = client.post("/gateway/v1/messages", content=over, headers=headers)
        assert gateway.status_code == 413
        assert gateway.json()["error"]["type"] == "request_too_large"
        # At the limit, the body reaches the console, which answers for itself.
        at_limit = b'["' + b"a" * (LIMIT - 4) + b'"]'  # not an object: 400 from the console
        assert len(at_limit) == LIMIT
        passed = client.post("/api/v1/agents", content=at_limit, headers=headers)
        assert passed.status_code == 400, passed.text[:300]


def test_a_web_process_answers_only_what_nginx_would_send_it(proxied):
    """deploy/README.md's check of a web process on its port says what nginx says: the
    console's host name, and HTTPS; without them it is refused or sent to HTTPS."""
    direct = f"http://127.0.0.1:{proxied.web_ports[0]}/health"
    as_nginx = {"Host": "localhost", "X-Forwarded-Proto": "https"}
    assert httpx.get(direct, headers=as_nginx).status_code == 200
    assert httpx.get(direct).status_code == 400  # not one of ALLOWED_HOSTS
    assert httpx.get(direct, headers={"Host": "localhost"}).status_code == 301
