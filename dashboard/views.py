"""The operator dashboard: thin views over the selectors and services.

Each URL has one view, which renders the whole page or only its fragment
(``console.pages``). Actions answer with the fragment they changed and a toast,
appended out of band.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from agents.models import Agent
from agents.services import lifecycle, pausing
from console.pages import (
    operator_required,
    page_or_fragment,
    wants_fragment,
    with_toast,
)
from console.selectors import audit_events
from dashboard import selectors
from dashboard.forms import (
    AgentFilterForm,
    AuditFilterForm,
    DecisionFilterForm,
    ScalingRuleForm,
    SimulationForm,
)
from dashboard.logview import log_lines
from plumbing.errors import BadRequest, ConsoleError
from scaling import services as scaling_services
from scaling import simulator
from scaling.models import ScalingRule
from scaling.selectors import scaling_rule_list

__all__ = [
    "agent_action",
    "agent_logs",
    "agents",
    "audit",
    "decisions",
    "overview",
    "rule_create",
    "rule_delete",
    "rule_edit",
    "rule_row",
    "rule_simulate",
    "rule_simulate_draft",
    "rule_toggle",
    "scaling",
]

View = Callable[..., HttpResponse]

AGENTS_PER_PAGE = 25
DECISIONS_PER_PAGE = 30
AUDIT_PER_PAGE = 40
LOG_LINES = 200


def _fragment_only(page: str) -> Callable[[View], View]:
    """For URLs that only serve fragments: a plain browser visit goes to the page they belong
    to instead of a bare fragment."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method == "GET" and not wants_fragment(request):
                return redirect(page)
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def _query_without(query: QueryDict, *names: str) -> str:
    kept = query.copy()
    for name in names:
        kept.pop(name, None)
    return kept.urlencode()


# --- Overview -----------------------------------------------------------------------------------


@operator_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    context = {"o": selectors.fleet_overview()}
    return page_or_fragment(
        request, "dashboard/overview.html", "dashboard/partials/_overview.html", context
    )


# --- Agents -------------------------------------------------------------------------------------


@operator_required
@require_GET
def agents(request: HttpRequest) -> HttpResponse:
    form = AgentFilterForm(request.GET)
    filters = form.filters()
    number = form.cleaned_data.get("page") or 1 if form.is_valid() else 1
    page = selectors.page_of(
        selectors.dashboard_agent_list(viewer=request.user, **filters),
        number=number,
        size=AGENTS_PER_PAGE,
    )
    context = {
        "form": form,
        "filters": filters,
        "page": page,
        "query": _query_without(request.GET, "page"),
    }
    if not wants_fragment(request):
        context["models"] = selectors.agent_models()
    return page_or_fragment(
        request, "dashboard/agents.html", "dashboard/partials/_agent_table.html", context
    )


_AGENT_ACTIONS: dict[str, tuple[Callable[..., Agent], str]] = {
    "stop": (lifecycle.agent_stop, "is stopping"),
    "start": (lifecycle.agent_start, "is starting"),
    "pause": (pausing.agent_pause, "is pausing"),
    "resume": (pausing.agent_resume, "is resuming"),
    "restart": (lifecycle.agent_restart, "is restarting"),
    "delete": (lifecycle.agent_destroy, "is deleted; its sandbox is being torn down"),
}


@operator_required
@require_POST
def agent_action(request: HttpRequest, agent_id: str, action: str) -> HttpResponse:
    """Stop, start, pause, resume, restart or delete an agent; answers with its row (none once
    deleted)."""
    agent = get_object_or_404(selectors.agent_lookup(live=True), pk=agent_id)
    service, done = _AGENT_ACTIONS[action]
    label = agent.name or str(agent.pk)[:8]
    try:
        agent = service(agent=agent, actor=request.user)
    except ConsoleError as exc:
        response = render(request, "dashboard/partials/_agent_row.html", {"agent": agent})
        return with_toast(request, response, "error", f"{label}: {exc.message}")
    if action == "delete":
        response = HttpResponse("")
    else:
        response = render(request, "dashboard/partials/_agent_row.html", {"agent": agent})
    return with_toast(request, response, "success", f"Agent {label} {done}.")


@operator_required
@_fragment_only("dashboard:agents")
@require_GET
def agent_logs(request: HttpRequest, agent_id: str) -> HttpResponse:
    """The last lines of the agent runtime's log, in a dialog."""
    agent = get_object_or_404(selectors.agent_lookup(live=False), pk=agent_id)
    context = {
        "agent": agent,
        "log": log_lines(lifecycle.agent_log_tail(agent=agent, lines=LOG_LINES)),
        "lines": LOG_LINES,
    }
    return render(request, "dashboard/partials/_agent_logs.html", context)


# --- Scaling rules ------------------------------------------------------------------------------


def _rules_context() -> dict[str, Any]:
    return {"rules": list(selectors.rule_list())}


@operator_required
@require_GET
def scaling(request: HttpRequest) -> HttpResponse:
    return page_or_fragment(
        request,
        "dashboard/scaling.html",
        "dashboard/partials/_rule_table.html",
        _rules_context(),
    )


def _rule_row(request: HttpRequest, rule: ScalingRule, status: int = 200) -> HttpResponse:
    return render(request, "dashboard/partials/_rule_row.html", {"rule": rule}, status=status)


def _rule_form(
    request: HttpRequest, form: ScalingRuleForm, rule: ScalingRule | None, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "dashboard/partials/_rule_form.html",
        {"form": form, "rule": rule},
        status=status,
    )


@operator_required
@_fragment_only("dashboard:scaling")
@require_GET
def rule_row(request: HttpRequest, rule_id: int) -> HttpResponse:
    """The rule's row as it is saved (what Cancel brings back)."""
    return _rule_row(request, get_object_or_404(selectors.rule_list(), pk=rule_id))


@operator_required
@_fragment_only("dashboard:scaling")
def rule_edit(request: HttpRequest, rule_id: int) -> HttpResponse:
    """GET: the row as a form. POST: save it, or show the errors in place (422)."""
    rule = get_object_or_404(selectors.rule_list(), pk=rule_id)
    if request.method == "GET":
        return _rule_form(request, ScalingRuleForm(instance=rule), rule)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    form = ScalingRuleForm(request.POST, instance=rule)
    if not form.is_valid():
        return _rule_form(request, form, rule, status=422)
    changed = form.changed_values()
    rule = scaling_services.scaling_rule_update(rule=rule, values=changed, actor=request.user)
    text = f"Rule {rule.name} saved." if changed else f"Rule {rule.name}: nothing changed."
    return with_toast(request, _rule_row(request, rule), "success", text)


@operator_required
@_fragment_only("dashboard:scaling")
def rule_create(request: HttpRequest) -> HttpResponse:
    """GET: an empty rule form. POST: create the rule, or show the errors in place (422)."""
    if request.method == "GET":
        return _rule_form(request, ScalingRuleForm(), None)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    form = ScalingRuleForm(request.POST)
    if not form.is_valid():
        return _rule_form(request, form, None, status=422)
    rule = scaling_services.scaling_rule_create(actor=request.user, values=form.values())
    response = render(request, "dashboard/partials/_rule_table.html", _rules_context())
    response["HX-Retarget"] = "#rules"
    response["HX-Reswap"] = "outerHTML"
    return with_toast(request, response, "success", f"Rule {rule.name} created.")


@operator_required
@require_POST
def rule_toggle(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Enable a paused rule or pause an enabled one."""
    rule = get_object_or_404(selectors.rule_list(), pk=rule_id)
    enabled = not rule.enabled
    rule = scaling_services.scaling_rule_set_enabled(rule=rule, enabled=enabled, actor=request.user)
    text = f"Rule {rule.name} {'enabled' if rule.enabled else 'paused'}."
    return with_toast(request, _rule_row(request, rule), "success", text)


@operator_required
@require_POST
def rule_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(selectors.rule_list(), pk=rule_id)
    name = rule.name
    scaling_services.scaling_rule_delete(rule=rule, actor=request.user)
    return with_toast(request, HttpResponse(""), "success", f"Rule {name} deleted.")


# --- Simulation ---------------------------------------------------------------------------------

SIMULATION_MOVES = 40


def _trace(data: dict[str, Any]) -> tuple[simulator.TracePoint, ...]:
    if data["shape"] == "csv":
        return simulator.trace_from_csv(data["csv"])
    return simulator.trace_shape(data["shape"], low=data["low"], high=data["high"])


def _simulation(
    request: HttpRequest,
    *,
    rule: ScalingRule,
    form: SimulationForm,
    url: str,
    draft: list[tuple[str, str]] | None = None,
    rule_errors: Any = None,
) -> HttpResponse:
    """The simulation dialog, or only its result when its own form asks again."""
    context: dict[str, Any] = {
        "rule": rule,
        "form": form,
        "url": url,
        "draft": draft,
        "rule_errors": rule_errors,
    }
    if rule_errors is None and form.is_valid():
        try:
            result = simulator.simulate(rule=rule, trace=_trace(form.cleaned_data))
        except simulator.TraceError as exc:
            form.add_error(None, str(exc))
        else:
            # The simulator escapes every text it draws and writes no script.
            context["svg"] = mark_safe(simulator.simulation_svg(result, title=rule.name))
            context["summary"] = result.summary
            context["moves"] = result.moves[:SIMULATION_MOVES]
            context["more_moves"] = max(0, len(result.moves) - SIMULATION_MOVES)
    result_only = request.htmx and request.htmx.target == "sim-result"
    template = "_simulation_result.html" if result_only else "_simulation.html"
    return render(request, f"dashboard/partials/{template}", context)


def _simulation_form(request: HttpRequest, rule: ScalingRule) -> SimulationForm:
    if "sim-shape" in request.POST:
        return SimulationForm(request.POST)
    return SimulationForm({f"sim-{k}": v for k, v in SimulationForm.initial_for(rule).items()})


@operator_required
@_fragment_only("dashboard:scaling")
def rule_simulate(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Replay a load through a saved rule (GET: a load sized to the rule)."""
    rule = get_object_or_404(selectors.rule_list(), pk=rule_id)
    url = reverse("dashboard:rule-simulate", args=[rule.pk])
    return _simulation(request, rule=rule, form=_simulation_form(request, rule), url=url)


@operator_required
@require_POST
def rule_simulate_draft(request: HttpRequest) -> HttpResponse:
    """Replay a load through the rule as its form stands, unsaved (a new rule, or an edit)."""
    base = (
        selectors.rule_list().filter(pk=request.POST.get("draft_of") or None).first()
        or ScalingRule()
    )
    rule_form = ScalingRuleForm(request.POST, instance=base)
    valid = rule_form.is_valid()  # fills the unsaved instance; nothing is written
    rule = rule_form.instance
    draft = [
        (name, value)
        for name, values in request.POST.lists()
        if not name.startswith("sim-") and name != "csrfmiddlewaretoken"
        for value in values
    ]
    return _simulation(
        request,
        rule=rule,
        form=_simulation_form(request, rule),
        url=reverse("dashboard:rule-simulate-draft"),
        draft=draft,
        rule_errors=None if valid else rule_form.errors,
    )


# --- Decisions ----------------------------------------------------------------------------------


@operator_required
@require_GET
def decisions(request: HttpRequest) -> HttpResponse:
    form = DecisionFilterForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    rule_id = data.get("rule")
    page = selectors.page_of(
        selectors.decision_list(rule_id=rule_id),
        number=data.get("page") or 1,
        size=DECISIONS_PER_PAGE,
    )
    context = {
        "page": page,
        "rule_id": rule_id,
        "query": _query_without(request.GET, "page"),
    }
    if not wants_fragment(request):
        context["rules"] = list(scaling_rule_list().only("id", "name"))
    return page_or_fragment(
        request, "dashboard/decisions.html", "dashboard/partials/_decision_list.html", context
    )


# --- Audit log ----------------------------------------------------------------------------------


@operator_required
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    data = form.cleaned_data if form.is_valid() else {}
    try:
        events = audit_events(
            actor=data.get("actor"),
            action=data.get("action") or None,
            target_type=data.get("target_type") or None,
            cursor=data.get("cursor") or None,
            page_size=AUDIT_PER_PAGE,
        )
    except BadRequest:
        events = audit_events(page_size=AUDIT_PER_PAGE)
    context = {
        "events": events,
        "data": data,
        "query": _query_without(request.GET, "cursor"),
        "first_page": not data.get("cursor"),
        "audit_url": reverse("dashboard:audit"),
    }
    if not wants_fragment(request):
        context["choices"] = selectors.audit_filter_choices()
    return page_or_fragment(
        request, "dashboard/audit.html", "dashboard/partials/_audit_list.html", context
    )
