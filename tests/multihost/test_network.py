"""The simulated hosts themselves: they reach each other and the machine's forwarded services
over the bridge, and nothing else."""

from __future__ import annotations

import sys

import pytest

from tests.multihost.network import netns_problem, network
from tests.polling import eventually

pytestmark = pytest.mark.skipif(bool(netns_problem()), reason=netns_problem() or "")

_PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=2).close()
    print("open")
except OSError as exc:
    print("closed", exc)
"""


def _reach(host, address: str, port: int) -> str:
    ran = host.run([sys.executable, "-c", _PROBE, address, str(port)])
    return ran.stdout.strip().split()[0]


def test_hosts_reach_each_other_and_the_forwarded_services_only(tmp_path):
    with network(["a", "b"], services=[5432, 6379], logs=tmp_path) as net:
        a, b = net.hosts["a"], net.hosts["b"]
        listener = b.popen(
            [sys.executable, "-m", "http.server", "--bind", b.address, "8123"],
            env={"PATH": "/usr/bin:/bin"},
            log=tmp_path / "http.log",
        )
        try:
            assert eventually(lambda: _reach(a, b.address, 8123) == "open", 10)
            assert _reach(a, net.gateway, 5432) == "open"
            assert _reach(a, net.gateway, 6379) == "open"
            # The machine's loopback is not the host's, and nothing else is routed.
            assert _reach(a, "127.0.0.1", 5432) == "closed"
            assert _reach(a, net.gateway, 22) == "closed"
            assert _reach(a, "1.1.1.1", 53) == "closed"
        finally:
            listener.kill()
