"""The autoscaler's endpoint for Prometheus: where the agents' metrics are."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from agents.selectors import metrics_machines as metrics_machines_alive
from plumbing.errors import NotAuthenticated, error_response, methods_allowed
from plumbing.views import metrics_token_presented
from scaling.selectors import agent_scrape_targets

__all__ = ["metrics_machines", "metrics_targets"]


def _token_refusal(request: HttpRequest) -> JsonResponse | None:
    if metrics_token_presented(request):
        return None
    message = (
        "the metrics bearer token is required"
        if settings.METRICS_BEARER_TOKEN
        else "set METRICS_BEARER_TOKEN to let Prometheus discover and scrape the agents"
    )
    return error_response(NotAuthenticated(message))


@methods_allowed("GET")
def metrics_machines(request: HttpRequest) -> JsonResponse:
    """Prometheus' HTTP service discovery of the console's own machines: each machine with a
    web, gateway or relay process alive (``agents.selectors.metrics_machines``) as one target,
    its ``/metrics`` (the sum of all its processes), labelled ``machine`` and ``role``
    (``console``, or ``sandbox-host`` for a machine running only a relay). Only for the
    METRICS_BEARER_TOKEN, which must be set."""
    if refusal := _token_refusal(request):
        return refusal
    groups = []
    for found in metrics_machines_alive(now=timezone.now()):
        url = urlsplit(found.metrics_url)
        role = "sandbox-host" if found.kinds == ("relay",) else "console"
        labels = {"__scheme__": url.scheme, "__metrics_path__": url.path or "/metrics"}
        labels |= {"machine": found.machine, "role": role}
        groups.append({"targets": [url.netloc], "labels": labels})
    return JsonResponse(groups, safe=False)


@methods_allowed("GET")
def metrics_targets(request: HttpRequest) -> JsonResponse:
    """Prometheus' HTTP service discovery (``http_sd_configs``): every running agent, as a
    target scraped through this console's ``/agents/<id>/metrics``, at the address Prometheus
    reached the console at, labelled ``agent_id``, ``model``, ``owner`` and ``pool``
    (``scaling.selectors.agent_scrape_targets``). Only for the METRICS_BEARER_TOKEN, which must
    be set: the agents' metrics are served to no one else but their owners and operators."""
    if refusal := _token_refusal(request):
        return refusal
    host, scheme = request.get_host(), request.scheme
    groups = [
        {
            "targets": [host],
            "labels": {
                "__scheme__": scheme,
                "__metrics_path__": f"/agents/{target.agent_id}/metrics",
                "agent_id": str(target.agent_id),
                "model": target.model,
                "owner": target.owner,
                "pool": target.pool,
            },
        }
        for target in agent_scrape_targets()
    ]
    return JsonResponse(groups, safe=False)
