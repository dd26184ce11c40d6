"""The operator agents' pages: thin views over ``operator_agent``'s selectors and services.

``/operators/`` lists the agents with their spend today against their caps, and the calls
waiting for approval; an agent's page edits its settings and shows its latest runs, each action
with its reasoning, result and cost impact. Approving or denying answers with the approvals'
fragment and a toast.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from autopilot.forms import OperatorAgentForm
from autopilot.loop import tools_need_admin
from console.pages import operator_required, page_or_fragment, with_toast
from operator_agent import selectors, services
from operator_agent.models import OperatorAgent
from plumbing.errors import ConsoleError

__all__ = ["action_decide", "agent", "agent_create", "agent_run", "agents", "approvals"]

RUNS_SHOWN = 10


def _approvals_context() -> dict[str, Any]:
    return {"pending": list(selectors.operator_approvals_pending())}


@operator_required
@require_GET
def agents(request: HttpRequest) -> HttpResponse:
    found = list(selectors.operator_agent_list())
    spend = selectors.operator_spend(found)
    context = {
        "rows": [(agent, spend[agent.pk]) for agent in found],
        **_approvals_context(),
    }
    return render(request, "autopilot/agents.html", context)


@operator_required
@require_GET
def approvals(request: HttpRequest) -> HttpResponse:
    """The calls waiting for approval (the agents page polls this fragment)."""
    return page_or_fragment(
        request,
        "autopilot/approvals.html",
        "autopilot/partials/_approvals.html",
        _approvals_context(),
    )


@operator_required
@require_http_methods(["GET", "POST"])
def agent_create(request: HttpRequest) -> HttpResponse:
    form = OperatorAgentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        created = services.operator_agent_create(
            values=form.cleaned_data,
            admin=tools_need_admin(form.cleaned_data["allowed_tools"]),
            actor=request.user,
        )
        return redirect("autopilot:agent", agent_id=created.pk)
    status = 422 if form.errors else 200
    return render(request, "autopilot/agent_form.html", {"form": form}, status=status)


@operator_required
@require_http_methods(["GET", "POST"])
def agent(request: HttpRequest, agent_id: int) -> HttpResponse:
    found = get_object_or_404(OperatorAgent.objects.select_related("user"), pk=agent_id)
    form = OperatorAgentForm(request.POST or None, instance=found)
    if request.method == "POST" and form.is_valid():
        services.operator_agent_update(
            agent=found,
            values={name: form.cleaned_data[name] for name in form.changed_data},
            admin=tools_need_admin(form.cleaned_data["allowed_tools"]),
            actor=request.user,
        )
        return redirect("autopilot:agent", agent_id=found.pk)
    if request.method == "POST":  # the form's edits were not saved: show what is stored
        found.refresh_from_db()
    context = {
        "agent": found,
        "form": form,
        "spend": selectors.operator_spend([found])[found.pk],
        "runs": selectors.operator_runs(agent=found, limit=RUNS_SHOWN),
    }
    return render(request, "autopilot/agent.html", context, status=422 if form.errors else 200)


@operator_required
@require_POST
def agent_run(request: HttpRequest, agent_id: int) -> HttpResponse:
    """Run now; answers with a toast."""
    found = get_object_or_404(OperatorAgent, pk=agent_id)
    try:
        services.operator_run_start(agent=found, trigger=f"run by {request.user.get_username()}")
    except ConsoleError as exc:
        return with_toast(request, HttpResponse(""), "error", f"{found.name}: {exc.message}")
    return with_toast(request, HttpResponse(""), "success", f"{found.name} is running.")


@operator_required
@require_POST
def action_decide(request: HttpRequest, action_id: str, decision: str) -> HttpResponse:
    """Approve or deny a waiting call; answers with the approvals' fragment."""
    try:
        action = services.operator_action_decide(
            action_id=int(action_id), approve=decision == "approve", actor=request.user
        )
    except ConsoleError as exc:
        response = render(request, "autopilot/partials/_approvals.html", _approvals_context())
        return with_toast(request, response, "error", exc.message)
    response = render(request, "autopilot/partials/_approvals.html", _approvals_context())
    done = "approved: it runs now" if decision == "approve" else "denied: it will not run"
    return with_toast(request, response, "success", f"{action.tool} {done}.")
