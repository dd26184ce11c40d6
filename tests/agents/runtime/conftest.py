"""Fixtures shared by the agent runtime's tests (test_server.py, test_tools.py).

Each of those modules starts its own runtime against its own fake gateway: it defines the
module-scoped ``gateway`` and ``runtime`` fixtures these build on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.fakes.anthropic import FakeAnthropic

if TYPE_CHECKING:
    from tests.agents.runtime.test_server import Runtime


@pytest.fixture
def fake_gateway(gateway: FakeAnthropic) -> FakeAnthropic:
    """The module's fake gateway, with nothing scripted or recorded by an earlier test."""
    gateway.reset()
    gateway.chunk_delay = 0.0
    return gateway


@pytest.fixture
def runtime_http(runtime: Runtime) -> Iterator[httpx.Client]:
    """An HTTP client for the module's runtime."""
    with runtime.client() as http:
        yield http
