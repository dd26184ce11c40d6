"""The tenants' budgets as Prometheus gauges, read from the database at scrape time, so that
every process reports the same value and no gauge needs a multiprocess mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily

from console.selectors import budgets_nearest

__all__ = ["BudgetCollector"]


class BudgetCollector:
    """``console_budget_remaining`` and ``console_budget_limit`` (USD or tokens, as the budget's
    ``metric`` label says) for the ``METRICS_BUDGETS`` budgets (default 20) nearest their limit:
    a bounded set, whatever the number of users. Remaining is what new calls may still use in
    the current window: the limit less what settled and what calls in flight reserved."""

    def collect(self) -> Iterator[Any]:
        labels = ["user", "budget", "metric", "window"]
        remaining = GaugeMetricFamily(
            "console_budget_remaining",
            "What new calls may still use of a budget in its current window (USD or tokens).",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "console_budget_limit", "A budget's limit (USD or tokens).", labels=labels
        )
        for standing in budgets_nearest(count=settings.METRICS_BUDGETS):
            values = [standing.username, str(standing.budget_id), standing.metric, standing.window]
            remaining.add_metric(values, float(standing.remaining))
            limit.add_metric(values, float(standing.value))
        yield remaining
        yield limit
