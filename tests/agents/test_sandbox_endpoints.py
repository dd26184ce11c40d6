"""Where the console reaches an agent: its runtime's own address on one machine, its host's
relay otherwise."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from agents.sandbox import agent_endpoint, relay_target

AGENT = uuid.UUID("4e0a4764-06e9-4915-87e5-6b6ea65e8334")


def test_without_a_relay_an_agent_is_reached_where_its_runtime_listens(settings):
    settings.SANDBOX_RELAY_URL = ""
    agent = SimpleNamespace(pk=AGENT)
    assert agent_endpoint(agent=agent, local="unix:/run/agent.sock") == "unix:/run/agent.sock"


def test_with_a_relay_an_agent_is_reached_at_the_relay_and_its_id(settings):
    settings.SANDBOX_RELAY_URL = "https://host-1.internal:8090"
    agent = SimpleNamespace(pk=AGENT)
    assert agent_endpoint(agent=agent, local="unix:/run/agent.sock") == (
        f"https://host-1.internal:8090/{AGENT}"
    )


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        (f"http://host-1:8090/{AGENT}", ("http://host-1:8090", str(AGENT))),
        (f"https://host-1:8090/{AGENT}/", ("https://host-1:8090", str(AGENT))),
        ("unix:/run/agent.sock", None),
        ("http://127.0.0.1:40123", None),  # a microVM's forwarded port: its runtime's own
        ("http://127.0.0.1:40123/", None),
        (f"http://host-1:8090/{AGENT}/v1", None),
    ],
)
def test_a_relay_endpoint_is_told_from_a_runtimes_own(endpoint, target):
    assert relay_target(endpoint) == target
