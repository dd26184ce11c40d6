"""The operator's admin (quotas, suspensions, keys, every model's list) and the seeded prices."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, Message, Session
from console.errors import NotAuthenticated
from console.models import ApiKey, Quota
from console.services import (
    TokenUsage,
    api_key_authenticate,
    api_key_create,
    price_for,
    quota_get,
    usage_record,
)

pytestmark = pytest.mark.django_db

SPAWN = "/v1/agents/spawn"


@pytest.fixture
def admin(client, make_user):
    """A Django test client logged in as an operator superuser."""
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


def _changelist(model: str, app: str = "console") -> str:
    return reverse(f"admin:{app}_{model}_changelist")


def _rows(response) -> list:
    assert response.status_code == 200, response.content
    return list(response.context["cl"].result_list)


def _act(admin, action: str, model: str, pks: list) -> None:
    response = admin.post(_changelist(model), {"action": action, "_selected_action": pks})
    assert response.status_code == 302, response.content  # back to the list, with a message


def test_the_user_change_page_shows_the_quota_inline(admin, user):
    response = admin.get(reverse("admin:console_user_change", args=[user.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    for field in ("is_suspended", "max_agents", "requests_per_minute", "budget_window"):
        assert f'name="quota-0-{field}"' in page


def test_the_quota_list_is_searchable_by_username(admin, user, outsider):
    quota_get(user=user)
    quota_get(user=outsider)
    assert len(_rows(admin.get(_changelist("quota")))) == 2
    assert [q.user for q in _rows(admin.get(_changelist("quota"), {"q": "mallory"}))] == [outsider]


def test_the_quota_list_filters_by_suspension_and_budget_window(admin, user, outsider):
    quota_get(user=user)
    Quota.objects.filter(user=user).update(is_suspended=True, budget_window="day")
    quota_get(user=outsider)
    quotas = _changelist("quota")
    assert [q.user for q in _rows(admin.get(quotas, {"is_suspended__exact": "1"}))] == [user]
    assert [q.user for q in _rows(admin.get(quotas, {"is_suspended__exact": "0"}))] == [outsider]
    assert [q.user for q in _rows(admin.get(quotas, {"budget_window__exact": "day"}))] == [user]
    assert [q.user for q in _rows(admin.get(quotas, {"budget_window__exact": "month"}))] == [
        outsider
    ]


def test_suspending_a_user_refuses_their_api_requests_and_no_one_elses(
    admin, user, outsider, client_for
):
    _act(admin, "suspend_users", "quota", [quota_get(user=user).pk])
    quota_get(user=outsider)
    assert Quota.objects.get(user=user).is_suspended
    assert not Quota.objects.get(user=outsider).is_suspended

    response = client_for(user).post(SPAWN, {}, format="json")
    assert response.status_code == 403, response.content
    assert response.json()["error"]["code"] == "user_suspended"
    assert not Agent.objects.filter(owner=user).exists()
    assert client_for(outsider).post(SPAWN, {}, format="json").status_code == 201

    _act(admin, "unsuspend_users", "quota", [quota_get(user=user).pk])
    assert not Quota.objects.get(user=user).is_suspended


def test_resetting_the_budget_window_zeroes_what_was_spent(admin, user, outsider):
    started = timezone.now() - timedelta(days=10)
    for owner in (user, outsider):
        quota_get(user=owner)
    Quota.objects.update(tokens_used=5000, usd_used=Decimal("1.5"), window_started_at=started)

    _act(admin, "reset_budget_window", "quota", [Quota.objects.get(user=user).pk])

    quota = Quota.objects.get(user=user)
    assert (quota.tokens_used, quota.usd_used) == (0, Decimal(0))
    assert quota.window_started_at > started + timedelta(days=9)
    untouched = Quota.objects.get(user=outsider)
    assert (untouched.tokens_used, untouched.usd_used) == (5000, Decimal("1.5"))
    assert untouched.window_started_at == started


def test_the_api_key_revoke_action_revokes_only_the_selected_keys(admin, user, outsider):
    key, raw = api_key_create(user=user)
    _, other_raw = api_key_create(user=outsider)

    _act(admin, "revoke", "apikey", [key.pk])

    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw)
    assert api_key_authenticate(raw=other_raw).user == outsider


@pytest.mark.parametrize(
    ("app", "model"),
    [
        ("console", "user"),
        ("console", "quota"),
        ("console", "apikey"),
        ("console", "modelprice"),
        ("console", "usagerecord"),
        ("agents", "agent"),
        ("agents", "session"),
        ("agents", "message"),
    ],
)
def test_every_model_has_an_admin_list(admin, user, api_key, app, model):
    agent = Agent.objects.create(
        owner=user, model="claude-sonnet-4-5", sandbox_id=str(uuid.uuid4())
    )
    session = Session.objects.create(agent=agent, user=user, title="hello")
    Message.objects.create(session=session, role="user", content="hi")
    api_key(user)
    usage_record(
        user_id=user.pk,
        model="claude-sonnet-4-5",
        usage=TokenUsage(input_tokens=10, output_tokens=5),
        agent_id=agent.pk,
        session_id=session.pk,
    )
    assert _rows(admin.get(_changelist(model, app)))


def test_a_user_who_is_not_staff_is_sent_away_from_the_admin(client, user):
    client.force_login(user)
    for url in (reverse("admin:index"), _changelist("quota")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_the_seeded_price_table_has_sonnet_4_5():
    price = price_for(model="claude-sonnet-4-5", at=timezone.now())
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal(3), Decimal(15))
    assert price_for(model="claude-sonnet-4-5-20250929", at=timezone.now()) == price


def test_no_price_is_in_force_before_it_takes_effect():
    assert price_for(model="claude-sonnet-4-5", at=datetime(2025, 1, 1, tzinfo=UTC)) is None
    assert price_for(model="not-a-claude-model", at=timezone.now()) is None


def test_usage_is_priced_from_the_table_and_counted_against_the_quota(user):
    record = usage_record(
        user_id=user.pk,
        model="claude-sonnet-4-5-20250929",
        usage=TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000),
        request_id="req_1",
    )
    assert record.cost_usd == Decimal("18")
    record.refresh_from_db()
    assert record.cost_usd == Decimal("18")
    quota = Quota.objects.get(user=user)
    assert (quota.tokens_used, quota.usd_used) == (2_000_000, Decimal("18"))

    usage_record(user_id=user.pk, model="claude-sonnet-4-5", usage=TokenUsage(input_tokens=1000))
    quota.refresh_from_db()
    assert (quota.tokens_used, quota.usd_used) == (2_001_000, Decimal("18.003"))
