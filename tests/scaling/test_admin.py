"""The scaling admin: rules edited there are checked like the API's and recorded in the audit
log; decisions are read-only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import AuditEvent
from scaling.models import ScalingRule

pytestmark = pytest.mark.django_db

RULES = reverse("admin:scaling_scalingrule_changelist")
ADD_RULE = reverse("admin:scaling_scalingrule_add")


@pytest.fixture
def admin(client, make_user):
    """A Django test client logged in as an operator superuser."""
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


def _add_form(admin, **fields) -> dict:
    """The add page's form as a browser posts it with its defaults, and ``fields``."""
    form = admin.get(ADD_RULE).context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {name: value for name, value in data.items() if value is not None and value is not False}
    return {**data, "name": "chat", "model": "claude-sonnet-4-5", **fields}


def test_a_rule_added_in_the_admin_is_audited(admin):
    response = admin.post(ADD_RULE, _add_form(admin, max_agents=40))

    assert response.status_code == 302, response.context["adminform"].form.errors
    rule = ScalingRule.objects.get()
    assert (rule.max_agents, rule.enabled) == (40, True)
    event = AuditEvent.objects.get()
    assert (event.action, event.changes["max_agents"]) == ("scalingrule.create", [None, 40])


def test_the_admin_refuses_what_the_model_refuses(admin):
    response = admin.post(ADD_RULE, _add_form(admin, min_agents=50, max_agents=10))

    assert response.status_code == 200
    assert "min_agents" in response.context["adminform"].form.errors
    assert not ScalingRule.objects.exists()


def test_pausing_from_the_list_is_audited(admin, make_rule):
    rule = make_rule()

    response = admin.post(RULES, {"action": "pause_rules", "_selected_action": [rule.pk]})

    assert response.status_code == 302
    rule.refresh_from_db()
    assert not rule.enabled
    assert AuditEvent.objects.get().action == "scalingrule.pause"


def test_decisions_are_listed_and_never_edited(admin, make_rule, make_decision):
    decision = make_decision(make_rule())

    listed = admin.get(reverse("admin:scaling_scalingdecision_changelist"))
    assert list(listed.context["cl"].result_list) == [decision]
    assert admin.get(reverse("admin:scaling_scalingdecision_add")).status_code == 403
    page = admin.get(reverse("admin:scaling_scalingdecision_change", args=[decision.pk]))
    assert page.status_code == 200
    assert not page.context["has_change_permission"]
