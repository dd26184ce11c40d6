"""The scaling API: operators (staff with the admin scope) read and change rules, each change in
the audit log, and read decisions; everyone else is refused in the error shape, nothing
written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from console.models import AuditEvent
from scaling.models import ScalingRule
from tests.console.api.conftest import error_of

pytestmark = pytest.mark.django_db

RULES, DECISIONS = "/api/v1/scaling/rules", "/api/v1/scaling/decisions"

NEW_RULE = {
    "name": "support-chat",
    "model": "claude-sonnet-4-5",
    "system_prompt": "You answer support questions.",
    "min_agents": 2,
    "max_agents": 40,
    "scale_up_threshold": "0.75",
}


def _calls(rule_id: int, decision_id: int) -> list[tuple[str, str, dict | None]]:
    """Every operation of the scaling API, as (method, path, body)."""
    rule = f"{RULES}/{rule_id}"
    return [
        ("get", RULES, None),
        ("post", RULES, NEW_RULE),
        ("get", rule, None),
        ("patch", rule, {"max_agents": 50}),
        ("put", rule, NEW_RULE),
        ("delete", rule, None),
        ("post", f"{rule}/enable", None),
        ("post", f"{rule}/pause", None),
        ("get", DECISIONS, None),
        ("get", f"{DECISIONS}/{decision_id}", None),
    ]


def _call(client: APIClient, method: str, path: str, body: dict | None):
    return getattr(client, method)(path, body, format="json")


# --- Who may -------------------------------------------------------------------------------------


def test_users_and_keys_without_admin_are_refused_everywhere(
    user, operator, make_user, scoped_client, make_rule, make_decision
):
    rule = make_rule()
    decision = make_decision(rule)
    before = ScalingRule.objects.values().get()
    former = make_user("former-operator", is_staff=True)
    former_key = scoped_client(former, "read", "write", "admin")
    former.is_staff = False
    former.save()
    refused = (
        scoped_client(user),  # a plain user
        scoped_client(operator, "read", "write"),  # staff, but the key lacks admin
        former_key,  # an admin key whose user is no longer staff
    )
    for client in refused:
        for method, path, body in _calls(rule.pk, decision.pk):
            response = _call(client, method, path, body)
            assert response.status_code == 403, (method, path)
            error = error_of(response)
            assert error["code"] == "forbidden"
            assert error["details"] == {"required_scope": "admin"}, (method, path)

    assert ScalingRule.objects.values().get() == before
    assert not AuditEvent.objects.exists()


def test_anonymous_callers_are_asked_to_authenticate(make_rule, make_decision):
    rule = make_rule()
    decision = make_decision(rule)
    for method, path, body in _calls(rule.pk, decision.pk):
        response = _call(APIClient(), method, path, body)
        assert response.status_code == 401, (method, path)
        assert error_of(response)["code"] == "not_authenticated"
    assert ScalingRule.objects.count() == 1


def test_an_operator_key_without_write_reads_but_cannot_change(operator, scoped_client, make_rule):
    rule = make_rule()
    reader = scoped_client(operator, "read", "admin")

    assert reader.get(RULES).status_code == 200
    response = reader.post(f"{RULES}/{rule.pk}/pause")
    assert response.status_code == 403
    assert error_of(response)["details"] == {"required_scope": "write"}
    rule.refresh_from_db()
    assert rule.enabled


# --- Rules: create, read, change, delete ---------------------------------------------------------


def test_operator_creates_a_rule_with_defaults_for_the_rest(operator, operator_client):
    response = operator_client.post(RULES, NEW_RULE, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    rule = ScalingRule.objects.get()
    assert body["id"] == rule.pk
    assert (body["name"], body["min_agents"], body["max_agents"]) == ("support-chat", 2, 40)
    assert (body["scale_up_threshold"], body["scale_down_threshold"]) == ("0.750", "0.300")
    assert (body["scale_up_step_unit"], body["on_metrics_failure"], body["enabled"]) == (
        "percent",
        "keep",
        True,
    )
    assert operator_client.get(f"{RULES}/{rule.pk}").json() == body


def test_a_created_rule_is_audited_with_every_setting(operator, operator_client):
    rule_id = operator_client.post(RULES, NEW_RULE, format="json").json()["id"]

    event = AuditEvent.objects.get()
    assert (event.actor, event.action) == (operator, "scalingrule.create")
    assert (event.target_type, event.target_id) == ("scaling.scalingrule", str(rule_id))
    assert event.changes["name"] == [None, "support-chat"]
    assert event.changes["max_agents"] == [None, 40]
    assert event.changes["scale_up_threshold"] == [None, "0.75"]
    assert event.changes["target_sessions_per_agent"] == [None, 100]  # a default, too


def test_operator_patches_a_rule_and_the_audit_log_has_old_and_new(
    operator, operator_client, make_rule
):
    rule = make_rule(max_agents=1000)

    response = operator_client.patch(
        f"{RULES}/{rule.pk}",
        {"max_agents": 500, "scale_up_threshold": "0.9", "min_agents": 10},  # min unchanged
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert (response.json()["max_agents"], response.json()["scale_up_threshold"]) == (500, "0.900")
    rule.refresh_from_db()
    assert rule.max_agents == 500
    event = AuditEvent.objects.get()
    assert (event.actor, event.action) == (operator, "scalingrule.change")
    assert event.changes == {"max_agents": [1000, 500], "scale_up_threshold": ["0.8", "0.9"]}


def test_a_patch_that_changes_nothing_records_nothing(operator_client, make_rule):
    rule = make_rule()
    response = operator_client.patch(f"{RULES}/{rule.pk}", {"max_agents": 1000}, format="json")
    assert response.status_code == 200
    assert not AuditEvent.objects.exists()


def test_put_replaces_the_settings_it_names(operator_client, make_rule):
    rule = make_rule()
    response = operator_client.put(f"{RULES}/{rule.pk}", NEW_RULE, format="json")

    assert response.status_code == 200, response.json()
    rule.refresh_from_db()
    assert (rule.name, rule.system_prompt, rule.max_agents) == (
        "support-chat",
        "You answer support questions.",
        40,
    )
    assert AuditEvent.objects.get().action == "scalingrule.change"


def test_enabled_is_changed_by_enable_and_pause_only(operator_client, make_rule):
    rule = make_rule()
    response = operator_client.patch(f"{RULES}/{rule.pk}", {"enabled": False}, format="json")
    assert response.json()["enabled"] is True


def test_operator_deletes_a_rule_and_its_settings_are_kept_in_the_audit_log(
    operator, operator_client, make_rule, make_decision
):
    rule = make_rule(name="batch", max_agents=7, min_agents=1)
    make_decision(rule)

    response = operator_client.delete(f"{RULES}/{rule.pk}")

    assert response.status_code == 204
    assert not ScalingRule.objects.exists()
    event = AuditEvent.objects.get()
    assert (event.actor, event.action, event.target_id) == (
        operator,
        "scalingrule.delete",
        str(rule.pk),
    )
    assert event.changes["name"] == ["batch", None]
    assert event.changes["max_agents"] == [7, None]
    assert operator_client.get(f"{RULES}/{rule.pk}").status_code == 404


def test_an_unknown_rule_is_not_found_in_the_error_shape(operator_client):
    for method, path in (("get", f"{RULES}/999"), ("post", f"{RULES}/999/pause")):
        response = getattr(operator_client, method)(path)
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"


# --- Rules: enable and pause ---------------------------------------------------------------------


def test_pause_and_enable_switch_the_rule_and_are_audited(operator, operator_client, make_rule):
    rule = make_rule()

    paused = operator_client.post(f"{RULES}/{rule.pk}/pause")
    assert paused.status_code == 200
    assert paused.json()["enabled"] is False
    rule.refresh_from_db()
    assert not rule.enabled

    enabled = operator_client.post(f"{RULES}/{rule.pk}/enable")
    assert enabled.json()["enabled"] is True

    events = list(AuditEvent.objects.order_by("at", "id").values_list("action", "changes"))
    assert events == [
        ("scalingrule.pause", {"enabled": [True, False]}),
        ("scalingrule.enable", {"enabled": [False, True]}),
    ]
    assert {e.actor for e in AuditEvent.objects.all()} == {operator}


def test_pausing_a_paused_rule_changes_and_records_nothing(operator_client, make_rule):
    rule = make_rule(enabled=False)
    response = operator_client.post(f"{RULES}/{rule.pk}/pause")
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert not AuditEvent.objects.exists()


# --- Rules: validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"min_agents": 50, "max_agents": 10}, "min_agents"),
        ({"scale_up_threshold": "0.3", "scale_down_threshold": "0.6"}, "scale_down_threshold"),
        ({"scale_up_threshold": "1.2"}, "scale_up_threshold"),
        ({"on_metrics_failure": "fixed"}, "fallback_agents"),
        ({"on_metrics_failure": "fixed", "fallback_agents": 100}, "fallback_agents"),
        ({"scale_up_max_step": 5000}, "scale_up_max_step"),
        ({"scale_down_step_unit": "pods"}, "scale_down_step_unit"),
        ({"evaluation_interval_seconds": 1}, "evaluation_interval_seconds"),
        ({"name": ""}, "name"),
    ],
)
def test_an_invalid_rule_is_refused_with_the_field_named(operator_client, body, field):
    response = operator_client.post(RULES, {**NEW_RULE, **body}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert field in error["details"], error
    assert error["message"].startswith(f"The request is not valid: {field}: ")
    assert not ScalingRule.objects.exists()
    assert not AuditEvent.objects.exists()


def test_a_patch_is_checked_against_the_settings_it_leaves_alone(operator_client, make_rule):
    rule = make_rule(min_agents=10, max_agents=100)

    response = operator_client.patch(f"{RULES}/{rule.pk}", {"max_agents": 5}, format="json")

    assert response.status_code == 400
    assert "min_agents" in error_of(response)["details"]
    rule.refresh_from_db()
    assert rule.max_agents == 100
    assert not AuditEvent.objects.exists()


def test_a_second_rule_for_a_pool_or_a_name_is_refused(operator_client, make_rule):
    make_rule(name="taken", model=NEW_RULE["model"], system_prompt=NEW_RULE["system_prompt"])

    same_pool = operator_client.post(RULES, NEW_RULE, format="json")
    assert same_pool.status_code == 400
    assert "already scales this pool" in error_of(same_pool)["details"]["non_field_errors"][0]

    same_name = operator_client.post(
        RULES, {**NEW_RULE, "name": "taken", "system_prompt": "other"}, format="json"
    )
    assert same_name.status_code == 400
    assert "name" in error_of(same_name)["details"]
    assert ScalingRule.objects.count() == 1


# --- Lists ---------------------------------------------------------------------------------------


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


def test_rules_filter_by_enabled_and_model(operator_client, make_rule):
    on = make_rule(model="claude-sonnet-4-5")
    off = make_rule(model="claude-sonnet-4-5", enabled=False)
    haiku = make_rule(model="claude-haiku-4-5")

    assert sorted(_ids(operator_client.get(RULES))) == sorted([on.pk, off.pk, haiku.pk])
    assert sorted(_ids(operator_client.get(f"{RULES}?enabled=true"))) == sorted([on.pk, haiku.pk])
    assert _ids(operator_client.get(f"{RULES}?enabled=false")) == [off.pk]
    assert _ids(operator_client.get(f"{RULES}?model=claude-haiku-4-5")) == [haiku.pk]
    assert _ids(operator_client.get(f"{RULES}?model=claude-sonnet-4-5&enabled=false")) == [off.pk]


def test_a_malformed_filter_is_refused(operator_client):
    for path, field in (
        (f"{RULES}?enabled=maybe", "enabled"),
        (f"{DECISIONS}?rule=abc", "rule"),
        (f"{DECISIONS}?action=explode", "action"),
    ):
        response = operator_client.get(path)
        assert response.status_code == 400, path
        assert field in error_of(response)["details"]


def _walk(client: APIClient, url: str) -> list[int]:
    """Every id of a cursor-paginated list, page by page."""
    seen = []
    while url:
        body = client.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    return seen


def test_rules_page_by_cursor_newest_first_without_repeats(operator_client, make_rule):
    rules = [make_rule() for _ in range(5)]

    first = operator_client.get(f"{RULES}?page_size=2").json()
    assert len(first["results"]) == 2
    assert first["previous"] is None and first["next"]

    seen = _walk(operator_client, f"{RULES}?page_size=2")
    assert seen == [rule.pk for rule in reversed(rules)]


def test_decisions_newest_first_filtered_by_rule_and_action(
    operator_client, make_rule, make_decision
):
    chat, batch = make_rule(), make_rule()
    now = timezone.now()
    hold = make_decision(chat, created_at=now - timedelta(minutes=3))
    up = make_decision(
        chat, created_at=now - timedelta(minutes=2), action="scale_up", desired_agents=12
    )
    other = make_decision(batch, created_at=now - timedelta(minutes=1))

    assert _ids(operator_client.get(DECISIONS)) == [other.pk, up.pk, hold.pk]
    assert _ids(operator_client.get(f"{DECISIONS}?rule={chat.pk}")) == [up.pk, hold.pk]
    assert _ids(operator_client.get(f"{DECISIONS}?action=scale_up")) == [up.pk]
    assert _ids(operator_client.get(f"{DECISIONS}?rule={batch.pk}&action=scale_up")) == []
    assert _walk(operator_client, f"{DECISIONS}?page_size=1") == [other.pk, up.pk, hold.pk]


def test_a_decision_shows_what_the_policy_saw(operator_client, make_rule, make_decision):
    rule = make_rule()
    failed = make_decision(
        rule,
        observed_sessions=None,
        utilization=None,
        metrics_error="prometheus: connection refused",
        reason="metrics unavailable: keeping 10 agents",
        inputs={"current_agents": 10, "observed_sessions": None},
    )

    body = operator_client.get(f"{DECISIONS}/{failed.pk}").json()

    assert body["rule"] == rule.pk
    assert (body["action"], body["current_agents"], body["desired_agents"]) == ("hold", 10, 10)
    assert (body["observed_sessions"], body["utilization"]) == (None, None)
    assert body["metrics_error"] == "prometheus: connection refused"
    assert body["inputs"] == {"current_agents": 10, "observed_sessions": None}
    assert operator_client.get(f"{DECISIONS}/{failed.pk + 1}").status_code == 404


def _assert_constant_queries(client: APIClient, url: str, add_more, max_num_queries) -> None:
    """The list at ``url`` costs no more queries once ``add_more()`` has added rows."""
    assert client.get(url).status_code == 200  # warm: the key's last-used stamp, quota rows
    with CaptureQueriesContext(connection) as before:
        assert client.get(url).status_code == 200
    add_more()
    with max_num_queries(len(before.captured_queries)):
        response = client.get(url)
    assert response.status_code == 200
    assert len(response.json()["results"]) > 1


def test_the_rule_list_costs_the_same_queries_for_more_rules(
    operator_client, make_rule, django_assert_max_num_queries
):
    make_rule()

    def add_more():
        for _ in range(10):
            make_rule()

    _assert_constant_queries(operator_client, RULES, add_more, django_assert_max_num_queries)


def test_the_decision_list_costs_the_same_queries_for_more_decisions(
    operator_client, make_rule, make_decision, django_assert_max_num_queries
):
    rule = make_rule()
    make_decision(rule)

    def add_more():
        for other in [rule, make_rule(), make_rule()]:
            for _ in range(5):
                make_decision(other)

    _assert_constant_queries(operator_client, DECISIONS, add_more, django_assert_max_num_queries)
    _assert_constant_queries(
        operator_client, f"{DECISIONS}?rule={rule.pk}", add_more, django_assert_max_num_queries
    )
