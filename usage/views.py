"""The usage pages: usage and cost of a range for everyone signed in (their own; operators
anyone's or everyone's), and the quota views for operators.

One view per URL: the whole page, or only its fragment for an htmx request (not a boosted one);
``?format=csv`` answers the table's rows as CSV, the same query giving the same rows.
"""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from console.api.permissions import is_operator
from console.ledger_reads import FIGURES
from console.pages import operator_required, page_or_fragment
from usage import charts, selectors
from usage.forms import UsageQuery, UsageQueryForm

__all__ = ["quotas", "usage"]

BURNDOWNS_SHOWN = 12


@require_GET
@login_required
def usage(request: HttpRequest) -> HttpResponse:
    form = UsageQueryForm(request.GET)
    query = form.query()
    operator = is_operator(request)
    if operator:
        user_ids = [query.user_id] if query.user_id is not None else None
    else:
        user_ids = [request.user.pk]  # a user's own, whatever the query names
    report = selectors.usage_report(
        user_ids=user_ids,
        start=query.start,
        end=query.end,
        group_by=query.group_by,
        limit=query.limit,
    )
    if request.GET.get("format") == "csv":
        return _csv(report, query)
    burndowns = selectors.budget_burndowns(user_ids=user_ids)
    params = request.GET.copy()
    params.pop("format", None)
    context: dict[str, Any] = {
        "form": form,
        "query": query,
        "report": report,
        "operator": operator,
        "users": selectors.user_choices(chosen=query.user_id) if operator else [],
        "chart": charts.stacked(report.buckets, report.models, hourly=report.bucket == "hour"),
        "top_users": charts.bars(report.top_users),
        "top_agents": charts.bars(report.top_agents),
        "burndowns": burndowns[:BURNDOWNS_SHOWN],
        "burndowns_hidden": max(0, len(burndowns) - BURNDOWNS_SHOWN),
        "csv_query": _with(params, format="csv"),
        "now": timezone.now(),
    }
    return page_or_fragment(request, "usage/usage.html", "usage/partials/_report.html", context)


def _with(params: Any, **changes: str) -> str:
    copied = params.copy()
    for name, value in changes.items():
        copied[name] = value
    return copied.urlencode()


def _key_columns(group_by: str) -> tuple[str, ...]:
    return {
        "user": ("user_id", "user"),
        "agent": ("agent_id", "agent", "user"),
        "model": ("model",),
        "day": ("day",),
        "hour": ("hour",),
    }[group_by]


def _key_values(group_by: str, row: dict[str, Any]) -> list[str]:
    key = row["key"]
    if group_by == "user":
        return [str(key), row["label"]]
    if group_by == "agent":
        return [key[1] or "", row["label"], row["owner"]]
    if group_by == "hour":
        return [key.isoformat()]
    return [str(key)]


def _csv(report: selectors.UsageReport, query: UsageQuery) -> HttpResponse:
    """The table's rows, with exact amounts (the page rounds them)."""
    name = f"usage-{query.start:%Y%m%d}-{query.end:%Y%m%d}-by-{query.group_by}.csv"
    response = HttpResponse(
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
    writer = csv.writer(response)
    writer.writerow([*_key_columns(query.group_by), *FIGURES])
    for row in report.rows:
        writer.writerow(
            [*_key_values(query.group_by, row), *(str(row[column]) for column in FIGURES)]
        )
    return response


@require_GET
@operator_required
def quotas(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    by_limit, by_user = selectors.refusals_by_limit(now=now)
    context = {
        "limits": selectors.limits_nearest(count=25, now=now),
        "refusals": by_limit,
        "refusals_by_user": by_user,
        "refused_total": sum(row.refused for row in by_limit),
        "burndowns": selectors.budget_burndowns(user_ids=None, now=now)[:BURNDOWNS_SHOWN],
        "now": now,
    }
    return page_or_fragment(request, "usage/quotas.html", "usage/partials/_quotas.html", context)
