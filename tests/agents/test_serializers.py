"""A list's agents are written from plain rows: exactly the JSON ``AgentSerializer`` writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agents import selectors
from agents.models import Agent
from agents.serializers import AgentSerializer, agent_row_data

pytestmark = pytest.mark.django_db


def test_a_row_reads_as_the_serializer_writes(user, operator, settings):
    settings.CONSOLE_BASE_URL = "https://console.example"
    Agent.objects.create(owner=user, name="plain", model="claude-a")
    Agent.objects.create(
        owner=operator,
        name="failed <b>",
        model="claude-b",
        status=Agent.Status.FAILED,
        vcpus=4,
        memory_mib=2048,
        max_concurrent_sessions=7,
        backend="qemu",
        accel="tcg",
        last_error="boot timed out\nlast line",
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )
    agents = selectors.agent_list(viewer=operator, operator=True)
    expected = json.loads(json.dumps(AgentSerializer(agents, many=True).data))
    rows = [agent_row_data(row) for row in selectors.agent_rows(agents)]
    assert len(rows) == 2
    assert json.loads(json.dumps(rows)) == expected
