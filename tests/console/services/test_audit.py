"""The audit services: diffs of two states of a row, JSON-safe records, audited edits that never
write back stale counters, and budget resets under the user's quota lock."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent
from console.models import ApiKey, AuditEvent, Budget, Quota
from console.services import (
    TokenUsage,
    api_key_create,
    api_keys_revoke,
    audit_record,
    audited_delete,
    audited_save,
    budgets_reset,
    gateway_admit,
    gateway_settle,
    model_changes,
    quota_get,
    users_set_suspended,
)

pytestmark = pytest.mark.django_db

BUDGET_FORM = ["metric", "window", "rolling_hours", "limit"]


def _budget(owner, **fields) -> Budget:
    values = {"metric": Budget.Metric.USD, "window": Budget.Window.MONTH, "limit": Decimal(10)}
    return Budget.objects.create(user=owner, **(values | fields))


# --- Diffs and records -------------------------------------------------------------------------


def test_only_the_fields_that_differ_are_changes(user):
    before = Budget(user=user, limit=Decimal(10), used=Decimal("1.5"))
    after = Budget(user=user, limit=Decimal(20), used=Decimal("1.5"))
    assert model_changes(before, after, ["metric", "limit", "used"]) == {
        "limit": (Decimal(10), Decimal(20))
    }


def test_the_same_amount_at_another_scale_is_no_change(user):
    before = Budget(user=user, limit=Decimal("10.00000000"))
    assert model_changes(before, Budget(user=user, limit=Decimal(10)), ["limit"]) == {}


def test_a_foreign_key_is_compared_by_id(user, outsider):
    changes = model_changes(Budget(user=user), Budget(user=outsider), ["user"])
    assert changes == {"user": (user.pk, outsider.pk)}


def test_a_new_row_has_no_old_values_and_a_deleted_one_no_new_values(user):
    budget = Budget(user=user, limit=Decimal(10))
    fields = ["limit", "rolling_hours"]  # rolling_hours is empty before and after: no change
    assert model_changes(None, budget, fields) == {"limit": (None, Decimal(10))}
    assert model_changes(budget, None, fields) == {"limit": (Decimal(10), None)}


def test_an_event_says_who_did_what_to_which_row(user, operator):
    budget = _budget(user)

    event = audit_record(actor=operator, action="budget.change", target=budget)

    event.refresh_from_db()
    assert (event.actor, event.action, event.changes) == (operator, "budget.change", {})
    assert (event.target_type, event.target_id) == ("console.budget", str(budget.pk))
    assert event.target_repr == "Budget of alice: $10 per month"
    assert timezone.now() - event.at < timedelta(seconds=5)


def test_recorded_values_are_json_safe_and_exact(user, operator):
    agent = Agent.objects.create(
        owner=user, model="claude-sonnet-4-5", sandbox_id=str(uuid.uuid4())
    )
    key_id = uuid.uuid4()
    when = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)

    event = audit_record(
        actor=operator,
        action="agent.stop",
        target=agent,
        changes={
            "limit": (Decimal("10.00000000"), Decimal("12.345")),
            "at": (when, None),
            "day": (date(2026, 11, 1), date(2026, 12, 1)),
            "key": (None, key_id),
            "owner": (user, None),
            "running": (True, False),
        },
    )

    event.refresh_from_db()
    assert event.changes == {
        "limit": ["10", "12.345"],
        "at": ["2026-11-01T12:30:00+00:00", None],
        "day": ["2026-11-01", "2026-12-01"],
        "key": [None, str(key_id)],
        "owner": [user.pk, None],
        "running": [True, False],
    }
    assert (event.target_type, event.target_id) == ("agents.agent", str(agent.pk))


def test_an_event_without_an_actor_was_the_system(user):
    event = audit_record(actor=None, action="budget.reset", target=_budget(user))
    assert event.actor is None
    assert str(event).startswith("system budget.reset")


# --- Audited edits -----------------------------------------------------------------------------


def test_an_edit_writes_only_what_changed_so_spend_meanwhile_survives(user, operator):
    budget = _budget(user)
    stale = Budget.objects.get(pk=budget.pk)  # as the admin loaded it
    Budget.objects.filter(pk=budget.pk).update(used=Decimal(4), reserved=Decimal(2))  # the gateway
    stale.limit = Decimal(50)

    event = audited_save(instance=stale, fields=BUDGET_FORM, actor=operator)

    budget.refresh_from_db()
    assert (budget.limit, budget.used, budget.reserved) == (Decimal(50), Decimal(4), Decimal(2))
    assert (event.actor, event.action, event.changes) == (
        operator,
        "budget.change",
        {"limit": ["10", "50"]},
    )


def test_an_edit_that_changes_nothing_writes_and_records_nothing(user, operator):
    budget = _budget(user)
    updated_at = budget.updated_at
    assert audited_save(instance=budget, fields=BUDGET_FORM, actor=operator) is None
    budget.refresh_from_db()
    assert budget.updated_at == updated_at
    assert not AuditEvent.objects.exists()


def test_a_created_row_is_recorded_with_its_values(user, operator):
    budget = Budget(user=user, metric="tokens", window="day", limit=Decimal(1000))

    event = audited_save(instance=budget, fields=["user", *BUDGET_FORM], actor=operator)

    assert Budget.objects.get(pk=budget.pk).limit == Decimal(1000)
    assert (event.action, event.target_id) == ("budget.create", str(budget.pk))
    assert event.changes == {
        "user": [None, user.pk],
        "metric": [None, "tokens"],
        "window": [None, "day"],
        "limit": [None, "1000"],
    }


def test_a_deleted_row_is_recorded_with_the_values_it_had(user, operator):
    budget = _budget(user, used=Decimal("2.5"))
    budget_id = budget.pk

    event = audited_delete(instance=budget, actor=operator)

    assert not Budget.objects.filter(pk=budget_id).exists()
    assert (event.action, event.target_id) == ("budget.delete", str(budget_id))
    assert event.changes["limit"] == ["10", None]
    assert event.changes["used"] == ["2.5", None]


# --- Budget resets -----------------------------------------------------------------------------


def test_a_reset_starts_a_window_now_with_nothing_used_and_keeps_what_is_reserved(
    user, outsider, operator
):
    started = timezone.now() - timedelta(days=10)
    usd = _budget(user, used=Decimal(7), reserved=Decimal(3), window_started_at=started)
    tokens = _budget(user, metric="tokens", limit=Decimal(10**6), used=Decimal(500))
    other = _budget(outsider, used=Decimal(7), window_started_at=started)

    assert budgets_reset(budget_ids=[usd.pk, tokens.pk], actor=operator) == 2

    for budget in (usd, tokens):
        budget.refresh_from_db()
        assert budget.used == 0
        assert timezone.now() - budget.window_started_at < timedelta(seconds=5)
    assert usd.reserved == Decimal(3)  # calls in flight are still owed
    other.refresh_from_db()
    assert (other.used, other.window_started_at) == (Decimal(7), started)

    events = {event.target_id: event for event in AuditEvent.objects.filter(action="budget.reset")}
    assert set(events) == {str(usd.pk), str(tokens.pk)}
    assert events[str(usd.pk)].actor == operator
    assert events[str(usd.pk)].changes == {
        "used": ["7", "0"],
        "window_started_at": [started.isoformat(), usd.window_started_at.isoformat()],
    }


def test_a_rolling_budget_has_no_window_to_reset(user, operator):
    rolling = _budget(user, window="rolling", rolling_hours=5, used=Decimal(1))
    assert budgets_reset(budget_ids=[rolling.pk], actor=operator) == 0
    rolling.refresh_from_db()
    assert rolling.used == Decimal(1)
    assert not AuditEvent.objects.exists()


def test_a_call_in_flight_across_a_reset_settles_into_the_new_window(user, operator):
    budget = _budget(user, used=Decimal(5))
    admission = gateway_admit(
        user_id=user.pk,
        api_key_id=None,
        model="claude-sonnet-4-5",
        body_bytes=1000,
        max_tokens=1000,
    )
    budget.refresh_from_db()
    in_flight = budget.reserved
    assert in_flight > 0

    budgets_reset(budget_ids=[budget.pk], actor=operator)

    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (0, in_flight)
    usage = TokenUsage(input_tokens=100_000, output_tokens=10_000)
    gateway_settle(admission=admission, model="claude-sonnet-4-5", usage=usage)
    budget.refresh_from_db()
    assert (budget.used, budget.reserved) == (Decimal("0.45"), 0)  # 0.3 in + 0.15 out


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_reset_waits_for_the_users_quota_lock_and_reads_under_it(user, operator):
    quota_get(user=user)
    budget = _budget(user, used=Decimal(5))
    done = threading.Event()

    def reset() -> None:
        try:
            budgets_reset(budget_ids=[budget.pk], actor=operator)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=reset)
    with transaction.atomic():
        Quota.objects.select_for_update().get(user=user)  # as an admission holds it
        thread.start()
        assert not done.wait(0.5), "the reset did not wait for the user's lock"
        Budget.objects.filter(pk=budget.pk).update(used=Decimal(9))  # a settlement, under it
    thread.join(timeout=10)
    assert done.is_set()

    budget.refresh_from_db()
    assert budget.used == 0
    event = AuditEvent.objects.get(action="budget.reset")
    assert event.changes["used"] == ["9", "0"]


# --- Suspensions and revocations ---------------------------------------------------------------


def test_suspending_records_each_quota_whose_state_changed(user, outsider, make_user, operator):
    Quota.objects.create(user=user, is_suspended=True)
    quota_get(user=outsider)
    newcomer = make_user("nina")  # no quota yet: it is made with the default, not suspended

    count = users_set_suspended(
        user_ids=[user.pk, outsider.pk, newcomer.pk], suspended=True, actor=operator
    )

    assert count == 3
    assert Quota.objects.filter(is_suspended=True).count() == 3
    events = AuditEvent.objects.filter(action="quota.suspend")
    assert sorted(event.target_repr for event in events) == ["Quota of mallory", "Quota of nina"]
    assert {(event.actor, str(event.changes)) for event in events} == {
        (operator, str({"is_suspended": [False, True]}))
    }

    users_set_suspended(user_ids=[user.pk], suspended=False, actor=operator)
    lifted = AuditEvent.objects.get(action="quota.unsuspend")
    assert (lifted.target_repr, lifted.changes) == (
        "Quota of alice",
        {"is_suspended": [True, False]},
    )


def test_revoking_records_each_key_that_was_live(user, operator):
    live, _ = api_key_create(user=user)
    revoked, _ = api_key_create(user=user)
    api_keys_revoke(key_ids=[revoked.pk], actor=None)

    assert api_keys_revoke(key_ids=[live.pk, revoked.pk], actor=operator) == 1

    live.refresh_from_db()
    event = AuditEvent.objects.get(action="apikey.revoke", actor=operator)
    assert event.target_id == str(live.pk)
    assert event.changes == {"revoked_at": [None, live.revoked_at.isoformat()]}
    assert ApiKey.objects.filter(revoked_at=None).count() == 0
