"""Warm pools: booted ahead, claimed by a matching spawn at once, and refilled."""

from __future__ import annotations

import pytest

from agents.models import Agent, WarmPool
from agents.services import agent_spawn, agents_reap_idle, warm_pool_refill
from agents.services.warm import POOL_OWNER

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pool(settings):
    settings.AGENT_IDLE_TIMEOUT_SECONDS = 1
    pool = WarmPool.objects.create(
        name="helper", model="claude-sonnet-5-5", system_prompt="Be kind.", memory_mib=256, size=2
    )
    assert warm_pool_refill(pool_id=pool.pk) == 2
    return pool


def _ready(pool) -> list[Agent]:
    return list(Agent.objects.filter(warm_pool=pool, status="running"))


def test_refilling_boots_the_pool_to_its_size(pool):
    ready = _ready(pool)
    assert len(ready) == 2
    assert {a.owner.username for a in ready} == {POOL_OWNER}
    assert warm_pool_refill(pool_id=pool.pk) == 0  # already full


def test_a_matching_spawn_claims_a_running_agent_and_the_pool_refills(pool, user):
    warm_ids = {a.pk for a in _ready(pool)}
    agent = agent_spawn(
        owner=user,
        model="claude-sonnet-5-5",
        system_prompt="Be kind.",
        memory_mib=256,
        name="mine",
        anthropic_api_key="sk-ant-own",
    )
    assert agent.pk in warm_ids
    assert (agent.status, agent.owner, agent.name, agent.warm_pool) == (
        "running",
        user,
        "mine",
        None,
    )
    assert agent.anthropic_key_encrypted and "sk-ant-own" not in agent.anthropic_key_encrypted
    assert len(_ready(pool)) == 2  # refilled after the claim
    assert Agent.objects.filter(warm_pool=pool).exclude(pk=agent.pk).count() == 2


def test_a_spawn_of_another_template_boots_a_new_agent(pool, user):
    warm_ids = {a.pk for a in _ready(pool)}
    agent = agent_spawn(
        owner=user, model="claude-sonnet-5-5", system_prompt="Be terse.", memory_mib=256
    )
    assert agent.pk not in warm_ids
    assert len(_ready(pool)) == 2


def test_claims_count_against_the_users_quota(pool, user):
    from console.models import Quota
    from plumbing.errors import QuotaExceeded

    Quota.objects.create(user=user, max_agents=1)
    agent_spawn(owner=user, model="claude-sonnet-5-5", system_prompt="Be kind.", memory_mib=256)
    with pytest.raises(QuotaExceeded):
        agent_spawn(owner=user, model="claude-sonnet-5-5", system_prompt="Be kind.", memory_mib=256)


def test_warm_agents_are_not_reaped_as_idle(pool):
    import time

    time.sleep(1.1)
    assert agents_reap_idle() == 0
    assert len(_ready(pool)) == 2


def test_a_disabled_pool_is_neither_claimed_nor_refilled(pool, user):
    WarmPool.objects.filter(pk=pool.pk).update(is_enabled=False)
    warm_ids = {a.pk for a in _ready(pool)}
    agent = agent_spawn(
        owner=user, model="claude-sonnet-5-5", system_prompt="Be kind.", memory_mib=256
    )
    assert agent.pk not in warm_ids
    assert warm_pool_refill(pool_id=pool.pk) == 0
