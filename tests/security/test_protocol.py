"""HTTP's own rules on every route (the rows of test_scopes.py), whatever view serves it: DRF's,
the plain async views (chat, execute, turns), the health and metrics views; the gateway's in
test_protocol_asgi.py.

A 401 names its scheme (``WWW-Authenticate``), a 405 the methods the route allows (``Allow``),
and a body that is not JSON is ``malformed_body``, never another code.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.security.test_scopes import OPERATOR, ROWS, Row, _client, _routes
from tests.security.world import REFUSED, SESSION_STAFF, STAFF_ADMIN, WRITE, World

pytestmark = pytest.mark.django_db

API_PREFIXES = ("/v1/", "/api/", "/agents/", "/health", "/livez", "/ready", "/metrics")
WRONG_METHODS = ("PUT", "PATCH", "DELETE", "POST", "GET")


def _send(world: World, kind: str, row: Row, method: str, body: str = ""):
    ids = {name: str(value) for name, value in world.ids.items()}
    with transaction.atomic():
        response = _client(world, kind).generic(
            method, row.path.format(**ids), body, "application/json"
        )
        transaction.set_rollback(True)
    return response


def _is_api(row: Row) -> bool:
    return row.path.startswith(API_PREFIXES)


def _caller(row: Row) -> str:
    if not _is_api(row):
        return SESSION_STAFF
    return STAFF_ADMIN if row.policy == OPERATOR else WRITE


def _one_row_per_route() -> list[Row]:
    seen: dict[str, Row] = {}
    for row in ROWS:
        seen.setdefault(row.route, row)
    return list(seen.values())


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_every_401_carries_www_authenticate(row: Row, world: World, settings):
    settings.AGENT_BOOT_WAIT_SECONDS = 0
    for kind in sorted(REFUSED):
        response = _send(world, kind, row, row.method)
        if response.status_code == 401:
            assert response["WWW-Authenticate"] == 'Bearer realm="api"', (kind, row.name)


@pytest.mark.parametrize("row", _one_row_per_route(), ids=lambda row: row.route or "/")
def test_every_405_carries_allow(row: Row, world: World, settings):
    settings.AGENT_BOOT_WAIT_SECONDS = 0
    served = _routes()[row.route] | {r.method for r in ROWS if r.route == row.route}
    method = next(m for m in WRONG_METHODS if m not in served)
    response = _send(world, _caller(row), row, method)
    if _is_api(row):
        assert response.status_code == 405, (method, response.status_code, response.content)
    if response.status_code == 405:
        allowed = {m.strip() for m in response["Allow"].split(",")}
        assert method not in allowed
        assert row.method in allowed
        if response["Content-Type"] == "application/json":
            assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if r.method in ("POST", "PUT", "PATCH") and not r.form],
    ids=lambda row: row.name,
)
def test_a_body_that_is_not_json_is_malformed_body_everywhere(row: Row, world: World, settings):
    settings.AGENT_BOOT_WAIT_SECONDS = 0
    response = _send(world, _caller(row), row, row.method, body='{"prompt": "hi",')
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "malformed_body", response.content
