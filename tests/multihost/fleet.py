"""The console on simulated machines (deploy/README.md's walk-through), reached through nginx.

Host ``front`` runs nginx (the site rendered from the deploy template, on front's address) in
front of the daphne web processes and uvicorn gateways on front's loopback, and beat; each
sandbox host runs a Celery worker, its relay and its agents' sandboxes. PostgreSQL and Redis
are the machine's, forwarded onto the bridge; the fake Anthropic listens on the bridge. The
sandboxes call Claude through nginx (``GATEWAY_URL``), whose certificate each sandbox host
trusts as an operator's machine would (its own ``/etc/ssl``, ``ip netns exec``'s per-namespace
``/etc``).

The caller's process must have Django set up on the same database: it sees the sandbox hosts
come online there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.agents.workers import RELAY_KEY
from tests.conftest import PLATFORM_KEY
from tests.deploy.test_nginx import certificate, nginx_conf
from tests.fakes.anthropic import FakeAnthropic
from tests.multihost.network import Host, Network, network
from tests.polling import eventually

__all__ = ["METRICS_TOKEN", "RELAY_PORT", "Fleet", "namespace_kill", "running_fleet"]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RELAY_PORT = 8090
SECRET = "tests-only-multihost-0123456789abcdefghijklmnopqrstuvwxyz-0123456789"
DAEMON_OFF = ("-g", "daemon off;")
METRICS_TOKEN = "tests-only-multihost-metrics-token-0123456789"


@dataclass
class _Nginx:
    """front's nginx: its binary, its folder, the site's certificate; the site is re-rendered
    to change which processes it sends to."""

    binary: str
    prefix: Path
    address: str
    cert: Path
    cert_key: Path

    def site(self, web_ports: Sequence[int], gateway_ports: Sequence[int]) -> str:
        render = subprocess.run(
            [PYTHON, str(ROOT / "deploy" / "nginx" / "render.py")]
            + ["--server-name", self.address, "--listen", self.address]
            + [arg for port in web_ports for arg in ("--web", f"127.0.0.1:{port}")]
            + [arg for port in gateway_ports for arg in ("--gateway", f"127.0.0.1:{port}")]
            + ["--certificate", str(self.cert), "--certificate-key", str(self.cert_key)],
            capture_output=True,
            text=True,
            check=True,
        )
        return render.stdout


@dataclass
class Fleet:
    """A running fleet: its network, where nginx answers, the key of its one user, and every
    process it started, by name (``nginx``, ``beat``, ``web-<port>``, ``gateway-<port>``,
    ``worker-<host>``, ``relay-<host>``, and ``fake-anthropic`` when the fake runs apart)."""

    net: Network
    url: str  # https://<front's address>
    ca: ssl.SSLContext
    key: str
    fake: FakeAnthropic | None  # None when the fake runs in a process of its own
    logs: Path
    web_ports: tuple[int, ...]
    gateway_ports: tuple[int, ...]
    sandbox_hosts: tuple[str, ...]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, list[str]] = field(default_factory=dict)  # host name -> agent ids
    nginx: _Nginx | None = None

    def client(self, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(
            base_url=self.url, verify=self.ca, timeout=30, headers=headers, **kwargs
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self) -> str:
        """The end of every process's log, for a failure's message."""
        return "\n".join(f"--- {n} ---\n{self.log(n)[-2000:]}" for n in self.processes)

    def route(self, *, web_ports: Sequence[int], gateway_ports: Sequence[int]) -> None:
        """nginx sends the web routes to ``web_ports`` only and the gateway's to
        ``gateway_ports`` only, from its next connection on (a reload: the other processes
        keep running, idle)."""
        assert self.nginx is not None
        (self.nginx.prefix / "site.conf").write_text(self.nginx.site(web_ports, gateway_ports))
        error_log = self.nginx.prefix / "error.log"
        reloads = error_log.read_text().count("reconfiguring")
        self.processes["nginx"].send_signal(signal.SIGHUP)
        eventually(
            lambda: error_log.read_text().count("reconfiguring") > reloads,
            10,
            every=0.05,
            failing=lambda: f"nginx did not reload:\n{error_log.read_text()[-2000:]}",
        )


def _worker_options(name: str) -> list[str]:
    return [
        "--concurrency",
        "2",
        "--hostname",
        f"{name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


def _probe(host: Host, port: int) -> bool:
    code = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"
    return host.run([PYTHON, "-c", code, str(port)]).returncode == 0


def _probe_address(host: Host) -> bool:
    code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
    return host.run([PYTHON, "-c", code, host.address, str(RELAY_PORT)]).returncode == 0


def _ready(fleet: Fleet) -> bool:
    try:
        with httpx.Client(base_url=fleet.url, verify=fleet.ca, timeout=5) as client:
            return all(client.get("/ready").status_code == 200 for _ in range(4))
    except httpx.HTTPError:
        return False


def namespace_kill(host: Host) -> None:
    """Every process in ``host``'s namespace, as a machine that loses power: those started on
    it, and what they started in sessions of their own (the sandboxes)."""
    host.kill()
    listed = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _trust(host: Host, cert: Path) -> Path:
    """``host``'s own /etc/ssl (``ip netns exec`` mounts /etc/netns/<namespace>/* over /etc):
    the machine's CA bundle and the fleet's certificate, as an operator installs a private CA."""
    folder = Path("/etc/netns") / host.namespace
    shutil.copytree("/etc/ssl", folder / "ssl", symlinks=True)
    bundle = folder / "ssl" / "certs" / "ca-certificates.crt"
    bundle.unlink(missing_ok=True)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text((system.read_text() if system.exists() else "") + cert.read_text())
    return folder


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _on_bridge(url: str, net: Network, default_port: int) -> str:
    """``url`` (a service on the machine's loopback) as the simulated hosts reach it."""
    parsed = urlparse(url)
    user = f"{parsed.netloc.rpartition('@')[0]}@" if "@" in parsed.netloc else ""
    return parsed._replace(netloc=user + net.service(parsed.port or default_port)).geturl()


def _fake_process(net: Network, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fake Anthropic in a process of its own on the bridge, and its URL."""
    log = logs / "fake-anthropic.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "tests.fakes.anthropic", "--host", net.gateway, "--port", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def printed_url() -> str:
        found = re.search(r"FAKE_ANTHROPIC_URL=(\S+)", log.read_text())
        return found.group(1) if found else ""

    url = eventually(lambda: printed_url() or proc.poll() is not None, 30, every=0.1)
    if not isinstance(url, str):
        raise RuntimeError(f"the fake Anthropic did not start: {log.read_text()}")
    return proc, url


def _create_key(front: Host, env: dict[str, str], username: str) -> str:
    """The user and their key, made by the command an operator runs on the console machine."""
    command = [PYTHON, "manage.py", "create_api_key", username, "--create-user"]
    created = subprocess.run(
        ["ip", "netns", "exec", front.namespace, *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"\bac_\S+", created.stdout)
    if created.returncode != 0 or found is None:
        raise RuntimeError(f"create_api_key failed: {created.stdout}{created.stderr}")
    return found.group(0)


@contextlib.contextmanager
def running_fleet(
    *,
    logs: Path,
    nginx: str,
    database_url: str,
    redis_url: str,
    username: str = "alice",
    web_ports: Sequence[int] = (8001, 8002),
    gateway_ports: Sequence[int] = (8101, 8102),
    sandbox_hosts: Sequence[str] = ("sb1", "sb2"),
    settings: Mapping[str, str] | None = None,
    fake_in_process: bool = True,
) -> Iterator[Fleet]:
    """The fleet, once every process answers and every sandbox host is online; everything it
    started (processes, namespaces, the hosts' /etc folders) is gone when the block ends.

    ``database_url`` and ``redis_url`` name services on the machine's loopback, the database
    migrated; ``username`` is created there with an API key. ``settings`` are environment
    variables for every process, over the fleet's own. The fake Anthropic runs on a thread of
    the caller's process (``Fleet.fake``), or with ``fake_in_process=False`` in a process of its
    own, so that it does not share the caller's interpreter.
    """
    database, redis = urlparse(database_url), urlparse(redis_url)
    web_ports, gateway_ports = tuple(web_ports), tuple(gateway_ports)
    sandbox_hosts = tuple(sandbox_hosts)
    logs.mkdir(parents=True, exist_ok=True)
    short = Path(tempfile.mkdtemp(prefix="acf-"))  # sandbox sockets need short paths
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, short, ignore_errors=True)
        services = [database.port or 5432, redis.port or 6379]
        net = stack.enter_context(network(["front", *sandbox_hosts], services=services, logs=logs))
        for name in (*sandbox_hosts, "front"):  # before the network is removed
            stack.callback(namespace_kill, net.hosts[name])
        front = net.hosts["front"]
        url = f"https://{front.address}"
        cert, cert_key = certificate(logs, front.address)
        if not Path("/etc/netns").exists():
            stack.callback(_remove_if_empty, Path("/etc/netns"))
        for name in sandbox_hosts:
            stack.callback(shutil.rmtree, _trust(net.hosts[name], cert), ignore_errors=True)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        fake: FakeAnthropic | None = None
        if fake_in_process:
            fake = FakeAnthropic(host=net.gateway).start()
            stack.callback(fake.stop)
            fake_url = fake.base_url
        else:
            processes["fake-anthropic"], fake_url = _fake_process(net, logs)
            stack.callback(_stop, processes["fake-anthropic"])

        base = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "PYTEST_CURRENT_TEST", "CELERY_BROKER_URL"}
        } | {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": _on_bridge(database_url, net, 5432),
            "REDIS_URL": _on_bridge(redis_url, net, 6379),
            "SECRET_KEY": SECRET,
            "ALLOWED_HOSTS": front.address,
            "CONSOLE_BASE_URL": url,
            "CSRF_TRUSTED_ORIGINS": url,
            "TRUSTED_PROXIES": "1",
            "USE_X_FORWARDED_PROTO": "true",
            "SECURE_SSL_REDIRECT": "true",
            "SESSION_COOKIE_SECURE": "true",
            "CSRF_COOKIE_SECURE": "true",
            "GATEWAY_URL": f"{url}/gateway",
            "SANDBOX_RELAY_KEY": RELAY_KEY,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "METRICS_BEARER_TOKEN": METRICS_TOKEN,
            # Each web, gateway and relay process says it is alive, for Prometheus to find.
            "PROCESS_HEARTBEAT_SECONDS": "2",
        }
        base |= settings or {}
        metrics = logs / "front-metrics"
        metrics.mkdir()
        front_env = base | {
            "CONSOLE_VAR_DIR": str(logs / "front-var"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "WHITENOISE_USE_FINDERS": "true",
            "ANTHROPIC_API_KEY": PLATFORM_KEY,
            "ANTHROPIC_BASE_URL": fake_url,
            "ANTHROPIC_MAX_RETRIES": "0",
        }
        key = _create_key(front, front_env, username)

        for port in web_ports:  # as agent-console-web@.service runs them
            argv = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            processes[f"web-{port}"] = front.popen(
                [*argv, "config.asgi:application"], env=front_env, log=logs / f"web-{port}.log"
            )
        from config.launch import gateway_command

        for port in gateway_ports:
            processes[f"gateway-{port}"] = front.popen(
                [PYTHON, *gateway_command("127.0.0.1", port)],
                env=front_env,
                log=logs / f"gateway-{port}.log",
            )
        celery = [PYTHON, "-m", "celery", "-A", "config"]
        processes["beat"] = front.popen(
            [*celery, "beat", "--loglevel", "INFO"], env=front_env, log=logs / "beat.log"
        )
        stack.callback(_stop, processes["beat"])  # first: it gives the schedule's lock back
        prefix = logs / "nginx"
        prefix.mkdir()
        site = _Nginx(nginx, prefix, front.address, cert, cert_key)
        conf = nginx_conf(prefix, site.site(web_ports, gateway_ports))
        files = ["-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        processes["nginx"] = front.popen(
            [nginx, *files, *DAEMON_OFF], env=front_env, log=logs / "nginx.log"
        )

        for name in sandbox_hosts:
            host = net.hosts[name]
            host_tmp = short / name
            host_tmp.mkdir()
            env = base | {
                "CONSOLE_VAR_DIR": str(logs / f"{name}-var"),
                "SANDBOX_HOST_NAME": name,
                "SANDBOX_STATE_DIR": str(host_tmp / "sandboxes"),
                "SANDBOX_RELAY_LISTEN": f"{host.address}:{RELAY_PORT}",
                "SANDBOX_RELAY_URL": f"http://{host.address}:{RELAY_PORT}",
                "TMPDIR": str(host_tmp),
                # The worker's counters and the relay's, which the relay's /metrics sums.
                "PROMETHEUS_MULTIPROC_DIR": str(host_tmp / "metrics"),
            }
            (host_tmp / "metrics").mkdir()
            env.setdefault("SANDBOX_HOST_VCPUS", "8")
            worker = [*celery, "worker", "--loglevel", "INFO", *_worker_options(name)]
            processes[f"worker-{name}"] = host.popen(
                worker, env=env, log=logs / f"worker-{name}.log"
            )
            processes[f"relay-{name}"] = host.popen(
                [PYTHON, "manage.py", "sandbox_relay"], env=env, log=logs / f"relay-{name}.log"
            )

        fleet = Fleet(
            net,
            url,
            ssl.create_default_context(cafile=str(cert)),
            key,
            fake,
            logs,
            web_ports,
            gateway_ports,
            sandbox_hosts,
            processes,
            nginx=site,
        )
        for port in (*web_ports, *gateway_ports):
            eventually(lambda p=port: _probe(front, p), 60, every=0.3, failing=fleet.tails)
        eventually(lambda: _ready(fleet), 30, every=0.3, failing=fleet.tails)
        # Django is set up by the caller, on the fleet's database.
        from agents.models import SandboxHost

        def hosts_online() -> bool:
            online = SandboxHost.objects.filter(is_online=True).values_list("name", flat=True)
            return set(online) == set(sandbox_hosts)

        eventually(hosts_online, 60, every=0.3, failing=fleet.tails)
        for name in sandbox_hosts:
            host = net.hosts[name]
            eventually(lambda h=host: _probe_address(h), 30, every=0.3, failing=fleet.tails)
        yield fleet
