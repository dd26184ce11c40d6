"""Hosts simulated with Linux network namespaces: each has its own address on a bridge, and
reaches the others, and the machine's PostgreSQL and Redis through forwarders on the bridge,
and nothing else (no default route: traffic stays on the bridge and each host's loopback)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import eventually

__all__ = ["Host", "Network", "netns_problem", "network"]

REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str, namespace: str | None = None) -> None:
    argv = ["ip", *(("netns", "exec", namespace, "ip") if namespace else ()), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"acprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"network namespaces cannot be made here: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """One simulated machine: a namespace with an address on the bridge."""

    name: str
    namespace: str
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (in its own process group), its output in ``log``."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def kill(self) -> None:
        """Kill every process started on this host, as a machine that loses power."""
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.processes.clear()


@dataclass
class Network:
    """The bridge, its hosts, and where the machine's services are reached from them."""

    bridge: str
    gateway: str  # the bridge's own address, where the forwarders listen
    hosts: dict[str, Host]
    forwarders: list[subprocess.Popen[bytes]]

    def service(self, port: int) -> str:
        """``host:port`` at which every simulated host reaches the machine's ``port``."""
        return f"{self.gateway}:{port}"


def _forward(listen: str, target: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.multihost.forward", listen, target],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if not eventually(lambda: b"forwarding" in log.read_bytes() or proc.poll() is not None, 10):
        raise RuntimeError(f"the forwarder {listen} -> {target} did not start")
    if proc.poll() is not None:
        raise RuntimeError(f"the forwarder {listen} -> {target} failed: {log.read_text()}")
    return proc


@contextlib.contextmanager
def network(
    names: Sequence[str], *, services: Sequence[int] = (), logs: Path, tag: str | None = None
) -> Iterator[Network]:
    """Hosts called ``names`` on a fresh bridge, each reaching the machine's loopback ``services``
    (ports) at ``Network.service(port)``; everything is removed on exit."""
    tag = tag or f"{os.getpid() % 10000}"
    subnet = 200 + os.getpid() % 50
    bridge = f"acbr{tag}"
    gateway = f"10.231.{subnet}.1"
    hosts: dict[str, Host] = {}
    forwarders: list[subprocess.Popen[bytes]] = []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, name in enumerate(names):
            namespace, outside = f"ac{tag}-{name}", f"ac{tag}v{index}"
            _ip("netns", "add", namespace)
            hosts[name] = Host(name, namespace, f"10.231.{subnet}.{10 + index}")
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("addr", "add", f"{hosts[name].address}/24", "dev", "eth0", namespace=namespace)
            _ip("link", "set", "eth0", "up", namespace=namespace)
            _ip("link", "set", "lo", "up", namespace=namespace)
        for port in services:
            log = logs / f"forward-{port}.log"
            forwarders.append(_forward(f"{gateway}:{port}", f"127.0.0.1:{port}", log))
        yield Network(bridge, gateway, hosts, forwarders)
    finally:
        for host in hosts.values():
            host.kill()
        for proc in forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)
        for host in hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
