"""The operator's admin (quotas, budgets, suspensions, keys, the audit log, every model's list)
and the seeded prices. Every edit of a user's limits made here is in the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.forms import CheckboxInput, MultiWidget
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, Message, Session
from console.models import ApiKey, AuditEvent, Budget, Quota, UsageHourly
from console.services import (
    TokenUsage,
    api_key_authenticate,
    api_key_create,
    audit_record,
    price_for,
    quota_get,
    usage_record,
)
from plumbing.errors import NotAuthenticated

pytestmark = pytest.mark.django_db

SPAWN = "/v1/agents/spawn"


@pytest.fixture
def root(make_user):
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def admin(client, root):
    """A Django test client logged in as an operator superuser."""
    client.force_login(root)
    return client


def _changelist(model: str, app: str = "console") -> str:
    return reverse(f"admin:{app}_{model}_changelist")


def _change(model: str, pk: object) -> str:
    return reverse(f"admin:console_{model}_change", args=[pk])


def _rows(response) -> list:
    assert response.status_code == 200, response.content
    return list(response.context["cl"].result_list)


def _act(admin, action: str, model: str, pks: list, **extra) -> None:
    data = {"action": action, "_selected_action": pks, **extra}
    response = admin.post(_changelist(model), data)
    assert response.status_code == 302, response.content  # back to the list, with a message


def _messages(admin, model: str) -> list[str]:
    return [str(message) for message in admin.get(_changelist(model)).context["messages"]]


def _form_data(response) -> dict:
    """What a browser posts back from an admin add or change page left as it is."""
    assert response.status_code == 200, response.content
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data: dict = {}
    for form in forms:
        for field in form:
            value, widget = field.value(), field.field.widget
            if field.field.disabled:
                continue
            if isinstance(widget, MultiWidget):
                parts = widget.decompress(value)
                for suffix, sub, part in zip(
                    widget.widgets_names, widget.widgets, parts, strict=True
                ):
                    data[field.html_name + suffix] = sub.format_value(part) or ""
            elif isinstance(widget, CheckboxInput):
                if value:
                    data[field.html_name] = "on"
            else:
                data[field.html_name] = "" if value is None else value
    return data


def _save(admin, url: str, data: dict) -> None:
    response = admin.post(url, data)
    if response.status_code != 302:
        errors = [response.context["adminform"].form.errors]
        errors += [i.formset.errors for i in response.context["inline_admin_formsets"]]
        pytest.fail(f"the admin refused the form: {errors}")


def _budget(owner, **fields) -> Budget:
    values = {"metric": Budget.Metric.USD, "window": Budget.Window.MONTH, "limit": Decimal(10)}
    return Budget.objects.create(user=owner, **(values | fields))


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("at", "pk"))


# --- Users, quotas and suspensions -------------------------------------------------------------


def test_the_user_change_page_shows_the_quota_and_budget_inlines(admin, user):
    _budget(user)
    response = admin.get(reverse("admin:console_user_change", args=[user.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    for field in (
        "is_suspended",
        "max_agents",
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
        "timezone",
    ):
        assert f'name="quota-0-{field}"' in page
    for field in ("metric", "window", "rolling_hours", "limit"):
        assert f'name="budgets-0-{field}"' in page
    assert 'name="budgets-0-used"' not in page  # the gateway's counters are shown, not edited


def test_raising_limits_on_the_user_page_records_old_and_new_with_the_operator(admin, root, user):
    quota_get(user=user)
    budget = _budget(user)
    url = reverse("admin:console_user_change", args=[user.pk])
    data = _form_data(admin.get(url))
    Budget.objects.filter(pk=budget.pk).update(used=Decimal(3), reserved=Decimal(1))  # meanwhile
    data |= {"budgets-0-limit": "25", "quota-0-requests_per_minute": "60"}

    _save(admin, url, data)

    budget.refresh_from_db()
    assert (budget.limit, budget.used, budget.reserved) == (Decimal(25), Decimal(3), Decimal(1))
    assert Quota.objects.get(user=user).requests_per_minute == 60
    [raised] = _events("budget.change")
    assert (raised.actor, raised.target_id) == (root, str(budget.pk))
    assert raised.changes == {"limit": ["10", "25"]}
    assert raised.target_repr == "Budget of alice: $25 per month"
    [quota] = _events("quota.change")
    assert (quota.actor, quota.changes) == (root, {"requests_per_minute": [100, 60]})


def test_a_budget_added_or_deleted_on_the_user_page_is_recorded(admin, root, user):
    old = _budget(user)
    url = reverse("admin:console_user_change", args=[user.pk])
    data = _form_data(admin.get(url))
    data |= {
        "budgets-0-DELETE": "on",
        "budgets-TOTAL_FORMS": "2",
        "budgets-1-id": "",
        "budgets-1-user": str(user.pk),
        "budgets-1-metric": "tokens",
        "budgets-1-window": "rolling",
        "budgets-1-rolling_hours": "5",
        "budgets-1-limit": "100000",
    }

    _save(admin, url, data)

    new = Budget.objects.get(user=user)
    assert (new.metric, new.window, new.rolling_hours) == ("tokens", "rolling", 5)
    [created] = _events("budget.create")
    assert (created.actor, created.target_id) == (root, str(new.pk))
    assert created.changes["limit"] == [None, "100000"]
    [deleted] = _events("budget.delete")
    assert (deleted.actor, deleted.target_id) == (root, str(old.pk))
    assert deleted.changes["limit"] == ["10", None]


def test_saving_the_user_page_unchanged_records_nothing(admin, user):
    quota_get(user=user)
    _budget(user)
    url = reverse("admin:console_user_change", args=[user.pk])
    _save(admin, url, _form_data(admin.get(url)))
    assert not AuditEvent.objects.exists()


def test_the_quota_list_is_searchable_by_username(admin, user, outsider):
    quota_get(user=user)
    quota_get(user=outsider)
    assert len(_rows(admin.get(_changelist("quota")))) == 2
    assert [q.user for q in _rows(admin.get(_changelist("quota"), {"q": "mallory"}))] == [outsider]


def test_the_quota_list_filters_by_suspension(admin, user, outsider):
    quota_get(user=user)
    Quota.objects.filter(user=user).update(is_suspended=True)
    quota_get(user=outsider)
    quotas = _changelist("quota")
    assert [q.user for q in _rows(admin.get(quotas, {"is_suspended__exact": "1"}))] == [user]
    assert [q.user for q in _rows(admin.get(quotas, {"is_suspended__exact": "0"}))] == [outsider]


def test_editing_a_quota_records_old_and_new_values(admin, root, user):
    quota = quota_get(user=user)
    data = _form_data(admin.get(_change("quota", quota.pk)))
    data |= {"tokens_per_minute": "20000", "timezone": "Europe/Paris"}

    _save(admin, _change("quota", quota.pk), data)

    quota.refresh_from_db()
    assert (quota.tokens_per_minute, quota.timezone) == (20000, "Europe/Paris")
    [event] = _events("quota.change")
    assert (event.actor, event.target_repr) == (root, "Quota of alice")
    assert event.changes == {
        "tokens_per_minute": [None, 20000],
        "timezone": ["UTC", "Europe/Paris"],
    }


def test_suspending_a_user_refuses_their_api_requests_and_no_one_elses(
    admin, root, user, outsider, client_for
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
    [suspended] = _events("quota.suspend")
    [lifted] = _events("quota.unsuspend")
    assert (suspended.actor, suspended.target_repr) == (root, "Quota of alice")
    assert suspended.changes == {"is_suspended": [False, True]}
    assert (lifted.actor, lifted.changes) == (root, {"is_suspended": [True, False]})


# --- Budgets -----------------------------------------------------------------------------------


def test_the_budget_list_shows_every_users_budgets_and_filters_them(admin, user, outsider):
    mine = _budget(user, used=Decimal(3), reserved=Decimal(1))
    theirs = _budget(outsider, metric="tokens", window="day", limit=Decimal(1000))
    budgets = _changelist("budget")

    page = admin.get(budgets)
    assert set(_rows(page)) == {mine, theirs}
    for column in ("user", "metric", "window", "limit", "used", "reserved", "window_started_at"):
        assert f"column-{column}" in page.content.decode()
    assert _rows(admin.get(budgets, {"metric__exact": "tokens"})) == [theirs]
    assert _rows(admin.get(budgets, {"window__exact": "month"})) == [mine]
    assert _rows(admin.get(budgets, {"q": "alice"})) == [mine]


def test_the_budget_list_reads_the_same_queries_for_any_number_of_rows(admin, make_user):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            _rows(admin.get(_changelist("budget")))
        return len(captured)

    _budget(make_user("u0"))
    one = queries()
    for n in range(1, 6):
        _budget(make_user(f"u{n}"))
    assert queries() == one


def test_resetting_budgets_zeroes_what_was_used_and_starts_a_window_now(
    admin, root, user, outsider
):
    started = timezone.now() - timedelta(days=10)
    budget = _budget(user, used=Decimal(5), reserved=Decimal(2), window_started_at=started)
    other = _budget(outsider, used=Decimal(5), window_started_at=started)

    _act(admin, "reset_budgets", "budget", [budget.pk])

    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (0, Decimal(2))  # calls in flight are still owed
    assert timezone.now() - budget.window_started_at < timedelta(seconds=5)
    other.refresh_from_db()
    assert (other.used, other.window_started_at) == (Decimal(5), started)
    [event] = _events("budget.reset")
    assert (event.actor, event.target_id) == (root, str(budget.pk))
    assert event.changes["used"] == ["5", "0"]
    assert any("Reset 1 budget(s)" in message for message in _messages(admin, "budget"))


def test_resetting_a_rolling_budget_is_skipped_with_a_warning(admin, user):
    rolling = _budget(user, window="rolling", rolling_hours=24, used=Decimal(1))

    _act(admin, "reset_budgets", "budget", [rolling.pk])

    rolling.refresh_from_db()
    assert rolling.used == Decimal(1)
    assert not AuditEvent.objects.exists()
    assert any("Skipped 1 rolling budget(s)" in message for message in _messages(admin, "budget"))


def test_raising_a_limit_in_the_budget_admin_records_old_and_new_with_the_actor(admin, root, user):
    budget = _budget(user, used=Decimal(7))
    data = _form_data(admin.get(_change("budget", budget.pk)))
    assert "user" not in data  # a budget stays its user's
    data["limit"] = "12.5"

    _save(admin, _change("budget", budget.pk), data)

    budget.refresh_from_db()
    assert (budget.limit, budget.used) == (Decimal("12.5"), Decimal(7))
    [event] = _events("budget.change")
    assert (event.actor, event.changes) == (root, {"limit": ["10", "12.5"]})


def test_a_budget_the_model_refuses_is_not_saved_or_recorded(admin, user):
    budget = _budget(user, metric="tokens", limit=Decimal(1000))
    data = _form_data(admin.get(_change("budget", budget.pk))) | {"limit": "10.5"}

    response = admin.post(_change("budget", budget.pk), data)

    assert response.status_code == 200
    assert "whole number of tokens" in response.content.decode()
    budget.refresh_from_db()
    assert budget.limit == Decimal(1000)
    assert not AuditEvent.objects.exists()


def test_adding_and_deleting_a_budget_in_the_admin_is_recorded(admin, root, user):
    data = _form_data(admin.get(reverse("admin:console_budget_add")))
    data |= {"user": str(user.pk), "metric": "usd", "window": "day", "limit": "3"}

    _save(admin, reverse("admin:console_budget_add"), data)

    budget = Budget.objects.get(user=user)
    [created] = _events("budget.create")
    assert (created.actor, created.target_id) == (root, str(budget.pk))
    assert created.changes["user"] == [None, user.pk]
    assert created.changes["limit"] == [None, "3"]

    _act(admin, "delete_selected", "budget", [budget.pk], post="yes")

    assert not Budget.objects.exists()
    [deleted] = _events("budget.delete")
    assert (deleted.actor, deleted.target_id) == (root, str(budget.pk))
    assert deleted.changes["window"] == ["day", None]


# --- API keys ----------------------------------------------------------------------------------


def test_changing_an_api_keys_limits_is_recorded(admin, root, user):
    key, _ = api_key_create(user=user, name="ci")
    data = _form_data(admin.get(_change("apikey", key.pk)))
    data |= {"requests_per_minute": "30", "concurrent_requests": "2"}

    _save(admin, _change("apikey", key.pk), data)

    key.refresh_from_db()
    assert (key.requests_per_minute, key.concurrent_requests) == (30, 2)
    [event] = _events("apikey.change")
    assert event.actor == root
    assert event.changes == {"requests_per_minute": [None, 30], "concurrent_requests": [None, 2]}


def test_the_api_key_revoke_action_revokes_only_the_selected_keys(admin, root, user, outsider):
    key, raw = api_key_create(user=user)
    _, other_raw = api_key_create(user=outsider)

    _act(admin, "revoke", "apikey", [key.pk])

    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    with pytest.raises(NotAuthenticated):
        api_key_authenticate(raw=raw)
    assert api_key_authenticate(raw=other_raw).user == outsider
    [event] = _events("apikey.revoke")
    assert (event.actor, event.target_id) == (root, str(key.pk))


# --- The audit log -----------------------------------------------------------------------------


def test_the_audit_log_is_read_only(admin, operator, user):
    event = audit_record(
        actor=operator, action="budget.change", target=_budget(user), changes={"limit": (1, 2)}
    )
    change = _change("auditevent", event.pk)

    assert admin.get(reverse("admin:console_auditevent_add")).status_code == 403
    page = admin.get(change)
    assert page.status_code == 200  # shown, not editable
    assert not page.context["has_change_permission"]
    assert 'name="_save"' not in page.content.decode()
    assert admin.post(change, {"action": "budget.reset"}).status_code == 403
    assert admin.get(reverse("admin:console_auditevent_delete", args=[event.pk])).status_code == 403
    assert admin.get(_changelist("auditevent")).context["action_form"] is None  # no actions
    event.refresh_from_db()
    assert event.action == "budget.change"


def test_the_audit_log_lists_filters_and_searches_events(admin, root, operator, user, outsider):
    budget = _budget(user)
    raised = audit_record(
        actor=operator, action="budget.change", target=budget, changes={"limit": (10, 20)}
    )
    suspended = audit_record(
        actor=root,
        action="quota.suspend",
        target=quota_get(user=outsider),
        changes={"is_suspended": (False, True)},
    )
    log = _changelist("auditevent")

    page = admin.get(log)
    assert _rows(page) == [suspended, raised]  # newest first
    text = page.content.decode()
    assert "limit: 10 → 20" in text
    assert "Budget of alice: $10 per month (console.budget" in text
    assert _rows(admin.get(log, {"action": "quota.suspend"})) == [suspended]
    assert _rows(admin.get(log, {"target_type": "console.budget"})) == [raised]
    assert _rows(admin.get(log, {"q": "olivia"})) == [raised]  # the actor
    assert _rows(admin.get(log, {"q": "mallory"})) == [suspended]  # the target
    at = raised.at
    assert raised in _rows(admin.get(log, {"at__year": at.year, "at__month": at.month}))


def test_the_audit_log_reads_the_same_queries_for_any_number_of_events(admin, make_user, user):
    budget = _budget(user)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            _rows(admin.get(_changelist("auditevent")))
        return len(captured)

    audit_record(actor=make_user("o0", is_staff=True), action="budget.change", target=budget)
    one = queries()
    for n in range(1, 6):
        audit_record(actor=make_user(f"o{n}"), action="budget.reset", target=budget)
    assert queries() == one


# --- Every model, and who may come in ----------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "model"),
    [
        ("console", "user"),
        ("console", "quota"),
        ("console", "budget"),
        ("console", "apikey"),
        ("console", "modelprice"),
        ("console", "usagerecord"),
        ("console", "auditevent"),
        ("agents", "agent"),
        ("agents", "session"),
        ("agents", "message"),
    ],
)
def test_every_model_has_an_admin_list(admin, operator, user, api_key, app, model):
    agent = Agent.objects.create(
        owner=user, model="claude-sonnet-4-5", sandbox_id=str(uuid.uuid4())
    )
    session = Session.objects.create(agent=agent, user=user, title="hello")
    Message.objects.create(session=session, role="user", content="hi")
    api_key(user)
    quota_get(user=user)
    audit_record(actor=operator, action="budget.create", target=_budget(user))
    usage_record(
        user_id=user.pk,
        model="claude-sonnet-4-5",
        usage=TokenUsage(input_tokens=10, output_tokens=5),
        agent_id=agent.pk,
        session_id=session.pk,
    )
    assert _rows(admin.get(_changelist(model, app)))


ADMIN_PAGES = ["index", "console_quota_changelist", "console_budget_changelist"]


def test_an_outsider_who_is_not_staff_is_sent_away_from_the_admin(client, outsider, user):
    event = audit_record(actor=None, action="budget.create", target=_budget(user))
    client.force_login(outsider)
    urls = [reverse(f"admin:{name}") for name in ADMIN_PAGES]
    urls += [_changelist("auditevent"), _change("auditevent", event.pk)]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login"))
    response = client.post(
        _changelist("budget"), {"action": "reset_budgets", "_selected_action": [event.target_id]}
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert not AuditEvent.objects.exclude(pk=event.pk).exists()


def test_staff_without_permissions_may_not_read_the_audit_log_or_reset_budgets(
    client, operator, user
):
    budget = _budget(user, used=Decimal(5))
    client.force_login(operator)
    assert client.get(_changelist("auditevent")).status_code == 403
    response = client.post(
        _changelist("budget"), {"action": "reset_budgets", "_selected_action": [budget.pk]}
    )
    assert response.status_code == 403
    budget.refresh_from_db()
    assert budget.used == Decimal(5)


# --- Prices and the ledger ---------------------------------------------------------------------


def test_the_seeded_price_table_has_sonnet_4_5():
    price = price_for(model="claude-sonnet-4-5", at=timezone.now())
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal(3), Decimal(15))
    assert price_for(model="claude-sonnet-4-5-20250929", at=timezone.now()) == price


def test_no_price_is_in_force_before_it_takes_effect():
    assert price_for(model="claude-sonnet-4-5", at=datetime(2025, 1, 1, tzinfo=UTC)) is None
    assert price_for(model="not-a-claude-model", at=timezone.now()) is None


def test_usage_is_priced_from_the_table_and_rolled_up_by_the_hour(user):
    record = usage_record(
        user_id=user.pk,
        model="claude-sonnet-4-5-20250929",
        usage=TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000),
        request_id="req_1",
    )
    assert record.cost_usd == Decimal("18")
    record.refresh_from_db()
    assert record.cost_usd == Decimal("18")

    usage_record(user_id=user.pk, model="claude-sonnet-4-5", usage=TokenUsage(input_tokens=1000))
    hours = UsageHourly.objects.filter(user=user)
    assert sum(h.cost_usd for h in hours) == Decimal("18.003")
    assert sum(h.input_tokens + h.output_tokens for h in hours) == 2_001_000
    assert sum(h.requests for h in hours) == 2
