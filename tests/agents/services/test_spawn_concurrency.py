"""The agent quota holds under concurrent spawns: the check and the insert are one locked step."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from agents.models import Agent
from agents.services import agent_spawn
from console.models import Quota, User
from plumbing.errors import QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_spawns_never_exceed_the_agent_quota(user, settings):
    settings.SANDBOX_BOOT_TIMEOUT_SECONDS = 5
    Quota.objects.create(user=user, max_agents=3)
    workers, barrier = 12, threading.Barrier(12)
    outcomes: list[str] = []

    def spawn() -> None:
        barrier.wait()
        try:
            agent_spawn(owner=User.objects.get(pk=user.pk), memory_mib=128)
            outcomes.append("spawned")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=spawn) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * 9 + ["spawned"] * 3
    assert Agent.objects.filter(owner=user).count() == 3
