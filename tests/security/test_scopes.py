"""Every route against every kind of credential, with the status each must get.

The rows are checked against the URL configuration (``django.urls.get_resolver()``): a route
without a row fails ``test_every_route_has_a_row``. The gateway and the MCP server (``/mcp``),
ASGI apps of their own, and the WebSocket routes have tables of their own, in
test_scopes_asgi.py. Objects belong to alice; a
credential of anyone else must not reach them (404, as the API answers for what a caller may not
see), unless it passes the operator check (a staff user whose credential carries ``admin``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from tests.security.world import (
    ADMIN_NONSTAFF,
    ANON,
    CALLERS,
    JWT,
    KINDS,
    REFUSED,
    SESSION_STAFF,
    SESSION_SUPER,
    SESSION_USER,
    SESSIONS,
    STAFF_ADMIN,
    STAFF_NOADMIN,
    SUSPENDED,
    WRITE,
    World,
)

pytestmark = pytest.mark.django_db


def _client(world: World, kind: str) -> Client:
    if kind in SESSIONS:
        client = Client()
        client.force_login(world.sessions[kind])
        return client
    client = APIClient()
    if kind in world.tokens:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.tokens[kind]}")
    return client


# --- The rows ---------------------------------------------------------------------------------

# Policies: who may use a route, besides the status an allowed caller gets.
PUBLIC = "public"  # anyone; no credential is looked at
SAME = "the same answer for everyone"  # /ready: what it says depends on the backing services
METRICS_ONLY = "only for the metrics bearer token"  # no console credential opens it
ADMIN_LOGIN = "the admin's login page"  # a signed-in staff user goes on to the admin
PUBLIC_DRF = "public, but a credential sent is checked"
MINE = "the caller's own things"
OWNED = "alice's object; operators too"
OWNED_ONLY = "alice's object; only alice"
OPERATOR = "operators only"
PAGE = "a browser page for anyone signed in"
PAGE_OWNED = "a browser page of alice's object"
PAGE_OPERATOR = "a browser page for operators"


@dataclass(frozen=True, slots=True)
class Row:
    route: str
    method: str
    path: str
    policy: str
    ok: int
    body: dict[str, Any] | None = None
    form: bool = False  # a browser form post rather than JSON
    htmx: bool = False  # a fragment, asked for by htmx
    denied: int = 404  # what a caller gets for an object that is not theirs

    @property
    def name(self) -> str:
        return f"{self.method} {self.route or '/'}"


A, S, K, B = "{agent}", "{session}", "{key}", "{budget}"
R, D, U = "{rule}", "{decision}", "{alice}"
OA, OX = "{operator_agent}", "{operator_action}"
SIMULATION = {"trace": {"csv": "seconds,sessions\n0,500\n60,700\n"}}
NEW_RULE = {"name": "pool-2", "model": "claude-sonnet-4-5", "system_prompt": "Be a pool agent."}
NEW_BUDGET = {"user": U, "metric": "usd", "window": "month", "limit": "9"}

ROWS = [
    Row("", "GET", "/", PAGE, 200),
    Row("accounts/login/", "GET", "/accounts/login/", PUBLIC, 200),
    Row("accounts/logout/", "POST", "/accounts/logout/", PUBLIC, 302, form=True),
    Row("favicon.ico", "GET", "/favicon.ico", PUBLIC, 301),
    Row("health", "GET", "/health", PUBLIC, 200),
    Row("ready", "GET", "/ready", SAME, 0),
    Row("healthz", "GET", "/healthz", PUBLIC, 200),
    Row("livez", "GET", "/livez", PUBLIC, 200),
    Row("readyz", "GET", "/readyz", SAME, 0),
    Row("metrics", "GET", "/metrics", PUBLIC, 200),
    Row("metrics/targets", "GET", "/metrics/targets", METRICS_ONLY, 401),
    Row("metrics/machines", "GET", "/metrics/machines", METRICS_ONLY, 401),
    Row("admin/login/", "GET", "/admin/login/", ADMIN_LOGIN, 200),
    Row(
        "agents/<uuid:agent_id>/v1/agent/chat",
        "POST",
        f"/agents/{A}/v1/agent/chat",
        OWNED_ONLY,
        502,
        {"prompt": "hi"},
    ),
    Row("agents/<uuid:agent_id>/metrics", "GET", f"/agents/{A}/metrics", OWNED, 502),
    Row("agents/<uuid:agent_id>/health", "GET", f"/agents/{A}/health", OWNED, 502),
    Row("api/schema/", "GET", "/api/schema/", PUBLIC_DRF, 200),
    Row("api/docs/", "GET", "/api/docs/", PUBLIC_DRF, 200),
    Row("api/asyncapi/", "GET", "/api/asyncapi/", PUBLIC, 200),
    Row(
        "api/v1/auth/login",
        "POST",
        "/api/v1/auth/login",
        PUBLIC,
        200,
        {"username": "alice", "password": "pw"},
    ),
    Row(
        "api/v1/auth/refresh", "POST", "/api/v1/auth/refresh", PUBLIC, 200, {"refresh": "{refresh}"}
    ),
    Row("api/v1/usage", "GET", "/api/v1/usage", MINE, 200),
    Row(
        "api/v1/execute",
        "POST",
        "/api/v1/execute",
        OWNED_ONLY,
        502,
        {"task_description": "add 2 and 2", "agent_id": A},
    ),
    Row(
        "api/v1/sessions/<uuid:session_id>/messages",
        "POST",
        f"/api/v1/sessions/{S}/messages",
        OWNED_ONLY,
        502,
        {"content": "hi"},
    ),
    Row(
        "api/v1/sessions/<uuid:session_id>/cancel",
        "POST",
        f"/api/v1/sessions/{S}/cancel",
        OWNED_ONLY,
        409,
    ),
    # An agent's workspace is its owner's alone, operators' included; its runtime is unreachable
    # here (502), and a JSON body is no multipart upload (415).
    Row("api/v1/agents/<uuid:agent_id>/files", "GET", f"/api/v1/agents/{A}/files", OWNED_ONLY, 502),
    Row(
        "api/v1/agents/<uuid:agent_id>/files",
        "POST",
        f"/api/v1/agents/{A}/files",
        OWNED_ONLY,
        415,
        {"file": "x"},
    ),
    Row(
        "api/v1/agents/<uuid:agent_id>/files/<path:path>",
        "GET",
        f"/api/v1/agents/{A}/files/notes/a.txt",
        OWNED_ONLY,
        502,
    ),
    Row(
        "api/v1/agents/<uuid:agent_id>/files/<path:path>",
        "PUT",
        f"/api/v1/agents/{A}/files/notes/a.txt",
        OWNED_ONLY,
        502,
        {"any": "bytes"},
    ),
    Row(
        "api/v1/agents/<uuid:agent_id>/files/<path:path>",
        "DELETE",
        f"/api/v1/agents/{A}/files/notes/a.txt",
        OWNED_ONLY,
        502,
    ),
    Row(
        "api/v1/agents/<uuid:agent_id>/exec",
        "POST",
        f"/api/v1/agents/{A}/exec",
        OWNED_ONLY,
        502,
        {"command": "id"},
    ),
    Row("api/v1/scaling/simulate", "POST", "/api/v1/scaling/simulate", OPERATOR, 200, SIMULATION),
    Row("api/v1/^keys$", "GET", "/api/v1/keys", MINE, 200),
    Row("api/v1/^keys$", "POST", "/api/v1/keys", MINE, 201, {"name": "new", "scopes": ["read"]}),
    Row("api/v1/^keys/(?P<pk>[^/.]+)$", "GET", f"/api/v1/keys/{K}", OWNED_ONLY, 200),
    Row("api/v1/^keys/(?P<pk>[^/.]+)$", "DELETE", f"/api/v1/keys/{K}", OWNED_ONLY, 204),
    Row("api/v1/^keys/(?P<pk>[^/.]+)/revoke$", "POST", f"/api/v1/keys/{K}/revoke", OWNED_ONLY, 200),
    Row("api/v1/^quotas$", "GET", "/api/v1/quotas", OPERATOR, 200),
    Row("api/v1/^quotas/me$", "GET", "/api/v1/quotas/me", MINE, 200),
    Row("api/v1/^quotas/(?P<user_id>\\d+)$", "GET", f"/api/v1/quotas/{U}", OPERATOR, 200),
    Row(
        "api/v1/^quotas/(?P<user_id>\\d+)$",
        "PATCH",
        f"/api/v1/quotas/{U}",
        OPERATOR,
        200,
        {"max_agents": 5},
    ),
    Row("api/v1/^budgets$", "GET", "/api/v1/budgets", OPERATOR, 200),
    Row("api/v1/^budgets$", "POST", "/api/v1/budgets", OPERATOR, 201, NEW_BUDGET),
    Row("api/v1/^budgets/(?P<pk>[^/.]+)$", "GET", f"/api/v1/budgets/{B}", OPERATOR, 200),
    Row(
        "api/v1/^budgets/(?P<pk>[^/.]+)$",
        "PATCH",
        f"/api/v1/budgets/{B}",
        OPERATOR,
        200,
        {"limit": "7"},
    ),
    Row("api/v1/^budgets/(?P<pk>[^/.]+)$", "DELETE", f"/api/v1/budgets/{B}", OPERATOR, 204),
    Row(
        "api/v1/^budgets/(?P<pk>[^/.]+)/reset$", "POST", f"/api/v1/budgets/{B}/reset", OPERATOR, 200
    ),
    Row("api/v1/^agents$", "GET", "/api/v1/agents", MINE, 200),
    Row("api/v1/^agents$", "POST", "/api/v1/agents", MINE, 201, {"name": "new"}),
    Row("api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})$", "GET", f"/api/v1/agents/{A}", OWNED, 200),
    Row("api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})$", "DELETE", f"/api/v1/agents/{A}", OWNED, 200),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/logs$",
        "GET",
        f"/api/v1/agents/{A}/logs",
        OWNED,
        200,
    ),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/pause$",
        "POST",
        f"/api/v1/agents/{A}/pause",
        OWNED,
        200,
    ),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/resume$",
        "POST",
        f"/api/v1/agents/{A}/resume",
        OWNED,
        200,
    ),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/restart$",
        "POST",
        f"/api/v1/agents/{A}/restart",
        OWNED,
        200,
    ),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/start$",
        "POST",
        f"/api/v1/agents/{A}/start",
        OWNED,
        409,
    ),
    Row(
        "api/v1/^agents/(?P<pk>[0-9a-fA-F-]{36})/stop$",
        "POST",
        f"/api/v1/agents/{A}/stop",
        OWNED,
        200,
    ),
    Row("api/v1/^sessions$", "GET", "/api/v1/sessions", MINE, 200),
    Row("api/v1/^sessions$", "POST", "/api/v1/sessions", OWNED_ONLY, 201, {"agent_id": A}),
    Row("api/v1/^sessions/(?P<pk>[0-9a-fA-F-]{36})$", "GET", f"/api/v1/sessions/{S}", OWNED, 200),
    Row(
        "api/v1/^sessions/(?P<pk>[0-9a-fA-F-]{36})/turns$",
        "GET",
        f"/api/v1/sessions/{S}/turns",
        OWNED_ONLY,  # tool results hold what the agent read: not even operators
        200,
    ),
    Row(
        "api/v1/^sessions/(?P<pk>[0-9a-fA-F-]{36})/close$",
        "POST",
        f"/api/v1/sessions/{S}/close",
        OWNED_ONLY,  # operators see everyone's sessions; only their user closes one
        200,
    ),
    Row("api/v1/^scaling/rules$", "GET", "/api/v1/scaling/rules", OPERATOR, 200),
    Row("api/v1/^scaling/rules$", "POST", "/api/v1/scaling/rules", OPERATOR, 201, NEW_RULE),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)$", "GET", f"/api/v1/scaling/rules/{R}", OPERATOR, 200
    ),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)$",
        "PUT",
        f"/api/v1/scaling/rules/{R}",
        OPERATOR,
        200,
        NEW_RULE,
    ),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)$",
        "PATCH",
        f"/api/v1/scaling/rules/{R}",
        OPERATOR,
        200,
        {"max_agents": 50},
    ),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)$",
        "DELETE",
        f"/api/v1/scaling/rules/{R}",
        OPERATOR,
        204,
    ),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)/enable$",
        "POST",
        f"/api/v1/scaling/rules/{R}/enable",
        OPERATOR,
        200,
    ),
    Row(
        "api/v1/^scaling/rules/(?P<pk>[^/.]+)/pause$",
        "POST",
        f"/api/v1/scaling/rules/{R}/pause",
        OPERATOR,
        200,
    ),
    Row("api/v1/^scaling/decisions$", "GET", "/api/v1/scaling/decisions", OPERATOR, 200),
    Row(
        "api/v1/^scaling/decisions/(?P<pk>[^/.]+)$",
        "GET",
        f"/api/v1/scaling/decisions/{D}",
        OPERATOR,
        200,
    ),
    Row("dashboard/", "GET", "/dashboard/", PAGE_OPERATOR, 200),
    Row("dashboard/agents/", "GET", "/dashboard/agents/", PAGE_OPERATOR, 200),
    Row(
        "dashboard/agents/<uuid:agent_id>/logs",
        "GET",
        f"/dashboard/agents/{A}/logs",
        PAGE_OPERATOR,
        200,
        htmx=True,
    ),
    Row(
        "dashboard/^agents/(?P<agent_id>[0-9a-f-]{36})/(?P<action>stop|start|pause|resume|restart|delete)$",
        "POST",
        f"/dashboard/agents/{A}/stop",
        PAGE_OPERATOR,
        200,
        form=True,
    ),
    Row("dashboard/scaling/", "GET", "/dashboard/scaling/", PAGE_OPERATOR, 200),
    Row(
        "dashboard/scaling/rules/new",
        "GET",
        "/dashboard/scaling/rules/new",
        PAGE_OPERATOR,
        200,
        htmx=True,
    ),
    Row(
        "dashboard/scaling/rules/<int:rule_id>",
        "GET",
        f"/dashboard/scaling/rules/{R}",
        PAGE_OPERATOR,
        200,
        htmx=True,
    ),
    Row(
        "dashboard/scaling/rules/<int:rule_id>/edit",
        "GET",
        f"/dashboard/scaling/rules/{R}/edit",
        PAGE_OPERATOR,
        200,
        htmx=True,
    ),
    Row(
        "dashboard/scaling/rules/<int:rule_id>/toggle",
        "POST",
        f"/dashboard/scaling/rules/{R}/toggle",
        PAGE_OPERATOR,
        200,
        form=True,
    ),
    Row(
        "dashboard/scaling/rules/<int:rule_id>/delete",
        "POST",
        f"/dashboard/scaling/rules/{R}/delete",
        PAGE_OPERATOR,
        200,
        form=True,
    ),
    Row(
        "dashboard/scaling/rules/<int:rule_id>/simulate",
        "POST",
        f"/dashboard/scaling/rules/{R}/simulate",
        PAGE_OPERATOR,
        200,
        form=True,
    ),
    Row(
        "dashboard/scaling/simulate",
        "POST",
        "/dashboard/scaling/simulate",
        PAGE_OPERATOR,
        200,
        form=True,
    ),
    Row("dashboard/scaling/decisions/", "GET", "/dashboard/scaling/decisions/", PAGE_OPERATOR, 200),
    Row("api/v1/^operator/agents$", "GET", "/api/v1/operator/agents", OPERATOR, 200),
    Row(
        "api/v1/^operator/agents/(?P<pk>[^/.]+)$",
        "GET",
        f"/api/v1/operator/agents/{OA}",
        OPERATOR,
        200,
    ),
    # Started, and rolled back before its run's task is queued (on commit).
    Row(
        "api/v1/^operator/agents/(?P<pk>[^/.]+)/run$",
        "POST",
        f"/api/v1/operator/agents/{OA}/run",
        OPERATOR,
        202,
    ),
    Row("api/v1/^operator/actions$", "GET", "/api/v1/operator/actions", OPERATOR, 200),
    Row(
        "api/v1/^operator/actions/(?P<pk>[^/.]+)$",
        "GET",
        f"/api/v1/operator/actions/{OX}",
        OPERATOR,
        200,
    ),
    Row(
        "api/v1/^operator/actions/(?P<pk>[^/.]+)/approve$",
        "POST",
        f"/api/v1/operator/actions/{OX}/approve",
        OPERATOR,
        200,
    ),
    Row(
        "api/v1/^operator/actions/(?P<pk>[^/.]+)/deny$",
        "POST",
        f"/api/v1/operator/actions/{OX}/deny",
        OPERATOR,
        200,
    ),
    Row("operators/", "GET", "/operators/", PAGE_OPERATOR, 200),
    Row("operators/new", "GET", "/operators/new", PAGE_OPERATOR, 200),
    Row("operators/<int:agent_id>/", "GET", f"/operators/{OA}/", PAGE_OPERATOR, 200),
    Row(
        "operators/<int:agent_id>/run",
        "POST",
        f"/operators/{OA}/run",
        PAGE_OPERATOR,
        200,
        form=True,
        htmx=True,
    ),
    Row("operators/approvals", "GET", "/operators/approvals", PAGE_OPERATOR, 200),
    Row(
        "operators/^actions/(?P<action_id>[0-9]+)/(?P<decision>approve|deny)$",
        "POST",
        f"/operators/actions/{OX}/approve",
        PAGE_OPERATOR,
        200,
        form=True,
        htmx=True,
    ),
    Row("dashboard/audit/", "GET", "/dashboard/audit/", PAGE_OPERATOR, 200),
    Row("usage/", "GET", "/usage/", PAGE, 200),
    Row("usage/quotas/", "GET", "/usage/quotas/", PAGE_OPERATOR, 200),
    Row("keys/", "GET", "/keys/", PAGE, 200),
    Row("keys/new", "POST", "/keys/new", PAGE, 200, {"name": "new", "scopes": "read"}, form=True),
    # Someone else's key: 404, as if it did not exist.
    Row("keys/<int:key_id>/revoke", "POST", f"/keys/{K}/revoke", PAGE_OWNED, 200, form=True),
    Row("chat/", "GET", "/chat/", PAGE, 200),
    # Someone else's agent: back to the chat page with a message, and no session.
    Row("chat/new", "POST", "/chat/new", PAGE_OWNED, 302, {"agent_id": A}, form=True, denied=302),
    Row("chat/<uuid:session_id>", "GET", f"/chat/{S}", PAGE_OWNED, 200),
    # The files panel: the runtime is unreachable here, which the panel says (and 422 for an
    # action); someone else's agent does not exist.
    Row("chat/agents/<uuid:agent_id>/files", "GET", f"/chat/agents/{A}/files", PAGE_OWNED, 200),
    Row(
        "chat/agents/<uuid:agent_id>/files/upload",
        "POST",
        f"/chat/agents/{A}/files/upload",
        PAGE_OWNED,
        422,
        {"path": ""},
        form=True,
        htmx=True,
    ),
    Row(
        "chat/agents/<uuid:agent_id>/files/delete",
        "POST",
        f"/chat/agents/{A}/files/delete",
        PAGE_OWNED,
        422,
        {"path": "a.txt"},
        form=True,
        htmx=True,
    ),
    Row("^v1/agents/delete$", "DELETE", f"/v1/agents/delete?agent_id={A}", OWNED, 200),
    Row("^v1/agents/get$", "GET", f"/v1/agents/get?agent_id={A}", OWNED, 200),
    Row("^v1/agents/list$", "GET", "/v1/agents/list", MINE, 200),
    Row("^v1/agents/spawn$", "POST", "/v1/agents/spawn", MINE, 201, {"name": "new"}),
    Row("^v1/agents/stats$", "GET", "/v1/agents/stats", MINE, 200),
]


def expected(row: Row, kind: str) -> int:
    """The status ``kind`` must get on ``row``."""
    policy = row.policy
    if policy == PUBLIC:
        return row.ok
    if policy == METRICS_ONLY:
        return 401
    if policy == ADMIN_LOGIN:
        return 302 if kind in {SESSION_STAFF, SESSION_SUPER} else row.ok
    if policy == PUBLIC_DRF:
        if kind == SUSPENDED:
            return 403
        return 401 if kind in REFUSED - {ANON} else row.ok
    if policy.startswith("a browser page"):
        if kind not in SESSIONS:
            return 302  # to the login page: keys and JWTs never open a browser page
        caller = CALLERS[kind]
        if policy == PAGE_OPERATOR and not caller.operator:
            return 403
        if policy == PAGE_OWNED and not caller.owner:
            return row.denied
        return row.ok
    if kind in REFUSED:
        return 401
    if kind == SUSPENDED:
        return 403
    caller = CALLERS[kind]
    needed = "read" if row.method == "GET" else "write"
    if needed not in caller.scopes:
        return 403
    if policy == OPERATOR:
        return row.ok if caller.operator else 403
    if policy == OWNED and not (caller.owner or caller.operator):
        return row.denied
    if policy == OWNED_ONLY and not caller.owner:
        return row.denied
    return row.ok


# --- The tests --------------------------------------------------------------------------------


def _walk(patterns: list, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            found.append((prefix + str(pattern.pattern), pattern.callback))
    return found


def _routes() -> dict[str, set[str]]:
    """Every route outside the Django admin, with the methods its viewset maps (or none known)."""
    routes: dict[str, set[str]] = {}
    for route, callback in _walk(get_resolver().url_patterns):
        if route.startswith("admin/") and route != "admin/login/":
            continue  # the admin's own routes: test_the_admin_is_for_superusers_only
        actions = getattr(callback, "actions", None) or {}
        # DRF adds HEAD to a viewset's actions once it has answered a GET.
        methods = {method.upper() for method in actions} - {"HEAD", "OPTIONS"}
        routes.setdefault(route, set()).update(methods)
    return routes


def test_every_route_has_a_row():
    rows: dict[str, set[str]] = {}
    for row in ROWS:
        rows.setdefault(row.route, set()).add(row.method)
    routes = _routes()
    missing = {route for route in routes if route not in rows}
    assert not missing, f"routes without a row in ROWS: {sorted(missing)}"
    unmapped = {route: methods - rows[route] for route, methods in routes.items() if route in rows}
    assert not {r: m for r, m in unmapped.items() if m}, "viewset methods without a row"
    assert not set(rows) - set(routes), "rows for routes that no longer exist"


def _call(client: Client, world: World, row: Row):
    ids = {name: str(value) for name, value in world.ids.items()}
    path = row.path.format(**ids)
    body = {k: v.format(**ids) if isinstance(v, str) else v for k, v in (row.body or {}).items()}
    headers = {"HX-Request": "true"} if row.htmx else {}
    if row.form:
        return client.generic(
            row.method,
            path,
            "&".join(f"{k}={v}" for k, v in body.items()),
            "application/x-www-form-urlencoded",
            headers=headers,
        )
    return client.generic(
        row.method, path, json.dumps(body) if body else "", "application/json", headers=headers
    )


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_every_credential_gets_its_status(row: Row, world: World, db, settings):
    settings.AGENT_BOOT_WAIT_SECONDS = 0
    settings.AGENT_CHAT_TIMEOUT_SECONDS = 2
    wrong = {}
    statuses = {}
    for kind in KINDS:
        with transaction.atomic():
            response = _call(_client(world, kind), world, row)
            transaction.set_rollback(True)
        statuses[kind] = response.status_code
        if row.policy == SAME:
            continue
        if response.status_code != expected(row, kind):
            wrong[kind] = (response.status_code, expected(row, kind))
    assert not wrong, f"{row.name}: {{kind: (got, expected)}} {wrong}"
    if row.policy == SAME:
        assert len(set(statuses.values())) == 1, statuses


# --- The Django admin -------------------------------------------------------------------------


def _admin_paths(world: World) -> list[str]:
    """Every admin route, with a concrete id where it takes one."""
    alice = str(world.ids["alice"])
    paths = []
    for route, _ in _walk(get_resolver().url_patterns):
        if not route.startswith("admin/") or route == "admin/login/":
            continue
        path = (
            route.replace("<path:object_id>", alice)
            .replace("<id>", alice)
            .replace("<path:content_type_id>", "1")
            .replace(
                "^(?P<app_label>auth|console|agents|scaling|mcpserver|operator_agent)/$", "console/"
            )
            .replace("(?P<url>.*)$", "nothing-here/")
        )
        assert "<" not in path and "(" not in path, f"a new kind of admin route: {route}"
        paths.append("/" + path)
    return paths


def test_the_admin_is_for_staff_sessions_only_and_its_models_for_superusers(world: World):
    to_login = [ANON, WRITE, STAFF_ADMIN, ADMIN_NONSTAFF, JWT, SESSION_USER]
    wrong = {}
    for path in _admin_paths(world):
        for kind in [*to_login, SESSION_STAFF, SESSION_SUPER]:
            with transaction.atomic():
                response = _client(world, kind).get(path)
                transaction.set_rollback(True)
            to_the_login = response.status_code == 302 and response["Location"].startswith(
                "/admin/login/"
            )
            if path == "/admin/logout/":
                ok = response.status_code in (302, 405)
            elif kind in to_login:
                ok = to_the_login  # keys and JWTs never open the admin, nor a non-staff session
            elif kind == SESSION_STAFF:
                # Staff without model permissions: the index, never a model's page (a redirect
                # goes to another admin page, itself in this table).
                ok = response.status_code in (200, 302, 403, 404) and not to_the_login
                model_page = path.count("/") > 3 and not any(
                    page in path for page in ("password_change", "jsi18n", "autocomplete")
                )
                ok = ok and not (response.status_code == 200 and model_page)
            else:
                ok = response.status_code < 500 and not to_the_login
            if not ok:
                wrong[f"{kind} GET {path}"] = response.status_code
    assert not wrong, "\n".join(f"{cell}: {status}" for cell, status in wrong.items())


# --- Operators' powers, by content --------------------------------------------------------------


def test_a_staff_key_without_admin_sees_only_its_own_things(world: World):
    client = _client(world, STAFF_NOADMIN)
    agent, session = str(world.ids["agent"]), str(world.ids["session"])
    assert client.get("/api/v1/sessions").json()["results"] == []
    assert client.get("/api/v1/agents").json()["results"] == []
    assert client.get("/v1/agents/list").json() == {"agents": [], "count": 0}
    assert client.get("/v1/agents/list?user_id=alice").status_code == 403
    assert client.get("/v1/agents/stats").json()["scope"] == "own"
    assert client.get(f"/api/v1/sessions/{session}").status_code == 404
    assert client.get(f"/api/v1/agents/{agent}/logs").status_code == 404
    assert client.get("/api/v1/usage?user_id=" + str(world.ids["alice"])).status_code == 403
    spawned = client.post("/v1/agents/spawn", {"name": "x", "user_id": "alice"}, format="json")
    assert spawned.status_code == 403


def test_a_staff_key_with_admin_sees_everyones(world: World):
    client = _client(world, STAFF_ADMIN)
    session = client.get(f"/api/v1/sessions/{world.ids['session']}")
    assert session.status_code == 200
    assert "my secret plan" in session.content.decode()
    assert [a["agent_id"] for a in client.get("/v1/agents/list").json()["agents"]] == [
        str(world.ids["agent"])
    ]
    assert client.get("/v1/agents/stats").json()["scope"] == "all"
