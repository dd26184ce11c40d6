"""Quotas and budgets through the API: everyone reads their own; operators (staff with the admin
scope) list, read and change anyone's, each change in the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from console.models import AuditEvent, Budget, Quota
from console.services import budget_window, quota_get
from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

ME, QUOTAS, BUDGETS = "/api/v1/quotas/me", "/api/v1/quotas", "/api/v1/budgets"


@pytest.fixture
def admin_client(operator, scoped_client):
    return scoped_client(operator, "read", "write", "admin")


def test_me_shows_own_quota_and_budgets_in_their_window(user, client_for):
    quota = quota_get(user=user)
    quota.timezone = "Europe/Paris"
    quota.save()
    budget = Budget.objects.create(
        user=user, metric="usd", window="day", limit=Decimal(10), used=Decimal("2.5")
    )

    body = client_for(user).get(ME).json()

    assert (body["username"], body["timezone"]) == ("alice", "Europe/Paris")
    [shown] = body["budgets"]
    start, end = budget_window(budget, "Europe/Paris", timezone.now())
    assert shown["id"] == budget.pk
    assert (shown["limit"], shown["used"], shown["reserved"]) == (
        "10.00000000",
        "2.50000000",
        "0.00000000",
    )
    assert datetime.fromisoformat(shown["window_start"]) == start
    assert datetime.fromisoformat(shown["window_end"]) == end


def test_me_counts_an_ended_window_as_unused(user, client_for):
    Budget.objects.create(
        user=user,
        window="month",
        limit=Decimal(10),
        used=Decimal(4),
        window_started_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    [shown] = client_for(user).get(ME).json()["budgets"]
    assert shown["used"] == "0.00000000"


def test_operator_endpoints_refuse_users_and_keys_without_admin(user, operator, scoped_client):
    for client in (scoped_client(user), scoped_client(operator, "read", "write")):
        for response in (
            client.get(QUOTAS),
            client.get(f"{QUOTAS}/{user.pk}"),
            client.patch(f"{QUOTAS}/{user.pk}", {"max_agents": 1}, format="json"),
            client.get(BUDGETS),
            client.post(BUDGETS, {"user": user.pk, "limit": "5"}, format="json"),
        ):
            assert response.status_code == 403
            assert error_of(response)["details"] == {"required_scope": "admin"}
    assert not AuditEvent.objects.exists()


def test_an_admin_key_of_a_user_who_lost_staff_is_refused(operator, admin_client):
    operator.is_staff = False
    operator.save()
    assert admin_client.get(QUOTAS).status_code == 403


def test_a_read_only_admin_key_cannot_change_limits(user, operator, scoped_client):
    reader = scoped_client(operator, "read", "admin")
    assert reader.get(QUOTAS).status_code == 200
    refused = reader.patch(f"{QUOTAS}/{user.pk}", {"max_agents": 1}, format="json")
    assert refused.status_code == 403
    assert error_of(refused)["details"] == {"required_scope": "write"}


def test_operator_lists_and_reads_any_quota(user, outsider, admin_client):
    quota_get(user=user)
    quota_get(user=outsider)

    listed = admin_client.get(QUOTAS, {"page_size": 2}).json()
    names = [q["username"] for q in listed["results"]]
    assert names == ["alice", "mallory"]
    assert listed["next"] is not None
    assert admin_client.get(f"{QUOTAS}/{outsider.pk}").json()["username"] == "mallory"
    assert error_of(admin_client.get(f"{QUOTAS}/99999"))["code"] == "not_found"


def test_quota_list_queries_do_not_grow_with_users(make_user, admin_client, constant_queries):
    def add_more():
        for n in range(4):
            owner = make_user(f"user{n}")
            quota_get(user=owner)
            Budget.objects.create(user=owner, limit=Decimal(5))
            Budget.objects.create(user=owner, window="rolling", rolling_hours=3, limit=5)

    add_more_first = make_user("first")
    Budget.objects.create(user=add_more_first, window="rolling", rolling_hours=3, limit=5)
    quota_get(user=add_more_first)
    constant_queries(admin_client, QUOTAS, add_more)


def test_operator_patches_limits_into_the_audit_log(user, operator, admin_client):
    response = admin_client.patch(
        f"{QUOTAS}/{user.pk}", {"max_agents": 3, "timezone": "Asia/Tokyo"}, format="json"
    )

    assert response.status_code == 200
    assert (response.json()["max_agents"], response.json()["timezone"]) == (3, "Asia/Tokyo")
    quota = Quota.objects.get(user=user)
    assert (quota.max_agents, quota.timezone) == (3, "Asia/Tokyo")
    event = AuditEvent.objects.get()
    assert (event.actor, event.action) == (operator, "quota.change")
    assert event.changes == {"max_agents": [50, 3], "timezone": ["UTC", "Asia/Tokyo"]}


def test_a_bad_limit_is_refused_and_nothing_changes(user, admin_client):
    response = admin_client.patch(
        f"{QUOTAS}/{user.pk}", {"max_agents": -1, "timezone": "Mars/Base"}, format="json"
    )
    assert response.status_code == 400
    assert set(error_of(response)["details"]) == {"max_agents", "timezone"}
    assert quota_get(user=user).max_agents == 50
    assert not AuditEvent.objects.exists()


def test_operator_creates_changes_resets_and_deletes_a_budget(user, operator, admin_client):
    created = admin_client.post(
        BUDGETS,
        {"user": user.pk, "metric": "tokens", "window": "day", "limit": "1000"},
        format="json",
    )
    assert created.status_code == 201
    budget_id = created.json()["id"]
    Budget.objects.filter(pk=budget_id).update(used=400)

    changed = admin_client.patch(f"{BUDGETS}/{budget_id}", {"limit": "2000"}, format="json")
    assert changed.json()["limit"] == "2000.00000000"
    reset = admin_client.post(f"{BUDGETS}/{budget_id}/reset")
    assert reset.json()["used"] == "0.00000000"
    assert admin_client.get(BUDGETS, {"user_id": user.pk}).json()["results"][0]["id"] == budget_id
    assert admin_client.delete(f"{BUDGETS}/{budget_id}").status_code == 204

    assert not Budget.objects.exists()
    actions = list(AuditEvent.objects.order_by("at", "id").values_list("action", flat=True))
    assert actions == ["budget.create", "budget.change", "budget.reset", "budget.delete"]


def test_budget_input_is_checked(user, admin_client):
    no_hours = admin_client.post(
        BUDGETS, {"user": user.pk, "window": "rolling", "limit": "5"}, format="json"
    )
    assert no_hours.status_code == 400
    assert "rolling_hours" in error_of(no_hours)["details"]
    rolling = Budget.objects.create(user=user, window="rolling", rolling_hours=2, limit=5)
    refused = admin_client.post(f"{BUDGETS}/{rolling.pk}/reset")
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "invalid_request"


def test_budget_list_queries_do_not_grow(make_user, admin_client, constant_queries):
    first = make_user("first")
    Budget.objects.create(user=first, limit=5)

    def add_more():
        for n in range(4):
            owner = make_user(f"user{n}")
            quota_get(user=owner)
            Budget.objects.create(user=owner, limit=5)

    constant_queries(admin_client, BUDGETS, add_more)
