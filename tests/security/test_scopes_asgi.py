"""The gateway, the MCP server and the chat socket (apps of their own, beside Django's URL
configuration) against every kind of credential."""

from __future__ import annotations

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from agents.routing import websocket_urlpatterns
from config.asgi import GATEWAY_PATH
from console.models import User
from tests.mcpserver.sdk import answer, http_session
from tests.security.world import (
    ADMIN_NONSTAFF,
    AGENT,
    ANON,
    CALLERS,
    DELETED,
    EXPIRED,
    JWT,
    KINDS,
    OUTSIDER,
    READ,
    REFUSED,
    REVOKED,
    SESSIONS,
    STAFF_ADMIN,
    STAFF_NOADMIN,
    SUSPENDED,
    WRITE,
    build_world,
)

pytestmark = pytest.mark.django_db(transaction=True)

# --- The gateway and the WebSockets: their own ASGI apps ----------------------------------------

GATEWAY_EXPECTED = {
    ANON: 401,
    READ: 403,  # a call spends money: write, or an agent's token
    WRITE: 200,
    ADMIN_NONSTAFF: 200,  # bob's own calls, billed to bob
    STAFF_NOADMIN: 200,
    STAFF_ADMIN: 200,
    JWT: 401,  # for the REST API, not for the gateway
    AGENT: 200,
    EXPIRED: 401,
    REVOKED: 401,
    SUSPENDED: 403,
    DELETED: 401,
    OUTSIDER: 200,
}


def test_every_credential_gets_its_status_at_the_gateway(asgi_server, fake_anthropic):
    world = build_world()
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    }
    wrong = {}
    for kind in KINDS:
        if kind in SESSIONS:
            continue  # the gateway reads no cookie: as anonymous
        headers = {"x-api-key": world.tokens[kind]} if kind in world.tokens else {}
        response = httpx.post(f"{asgi_server}{GATEWAY_PATH}", json=body, headers=headers)
        if response.status_code != GATEWAY_EXPECTED[kind]:
            wrong[kind] = (response.status_code, GATEWAY_EXPECTED[kind], response.text[:200])
        if response.status_code >= 400:  # Anthropic's error shape, and the console's
            error = response.json()
            assert error["type"] == "error" and error["error"]["type"], error
            assert {"code", "message", "details"} <= set(error["error"]), error
    assert not wrong, wrong
    refusal = httpx.post(
        f"{asgi_server}{GATEWAY_PATH}", json=body, headers={"x-api-key": world.tokens[READ]}
    ).json()
    assert refusal["error"]["type"] == "permission_error"
    assert refusal["error"]["details"] == {"required_scope": "write"}


# --- /mcp: the REST API's credentials, scopes and tenancy, refusals as the tools' errors ---------


def _mcp_expected(kind: str) -> dict[str, str] | int:
    """The HTTP status a credential gets at ``/mcp`` (401), or each tool's outcome: "ok" or the
    refusal's code."""
    if kind in REFUSED or kind in SESSIONS:  # /mcp reads no cookie: as anonymous
        return 401
    if kind == SUSPENDED:  # the scopes are checked first, then the request counted: refused
        suspended = dict.fromkeys(
            ("fleet_stats", "agent_get", "agents_stop_idle"), "user_suspended"
        )
        return suspended | {"hosts": "forbidden"}
    caller = CALLERS[kind]
    return {
        "fleet_stats": "ok",
        "agent_get": "ok" if caller.owner or caller.operator else "agent_not_found",
        "agents_stop_idle": "ok" if "write" in caller.scopes else "forbidden",
        "hosts": "ok" if caller.operator else "forbidden",
    }


def test_every_credential_gets_its_answer_from_the_mcp_server(asgi_server):
    world = build_world()
    arguments = {
        "fleet_stats": {},
        "agent_get": {"agent_id": str(world.ids["agent"])},
        "agents_stop_idle": {"idle_minutes": 525_600},  # stops nothing: it only needs write
        "hosts": {},
    }

    async def work(client):
        found = {}
        for tool, args in arguments.items():
            result = await client.call_tool(tool, args)
            found[tool] = answer(result)["error"]["code"] if result.is_error else "ok"
        return found

    wrong = {}
    for kind in KINDS:
        token = world.tokens.get(kind) if kind not in SESSIONS else None
        probe = httpx.post(
            f"{asgi_server}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        if probe.status_code == 401:
            assert probe.json()["error"]["code"] == "not_authenticated"
            found: dict[str, str] | int = 401
        else:
            found = http_session(asgi_server, token, work)
        if found != _mcp_expected(kind):
            wrong[kind] = (found, _mcp_expected(kind))
    assert not wrong, wrong


def test_the_websocket_routes_are_the_ones_in_the_table():
    assert [str(route.pattern) for route in websocket_urlpatterns] == ["ws/chat/"]


def test_every_credential_gets_its_status_on_the_chat_socket(settings):
    from config.asgi import application

    settings.CONSOLE_BASE_URL = "http://127.0.0.1:8000"
    # Who may connect is decided before the consumer joins a group: each socket here opens on an
    # event loop of its own, which a Redis layer's per-loop connections once hung on (for 120 s)
    # in a full run; the layer is not what this test is about.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "plumbing.layers.SweptInMemoryChannelLayer"}}
    world = build_world()
    sam = User.objects.get(username="sam")
    world.sessions[SUSPENDED] = sam

    def opens(kind: str) -> bool:
        headers = [(b"origin", b"http://127.0.0.1:8000")]
        if kind in world.sessions:
            browser = Client()
            browser.force_login(world.sessions[kind])
            headers.append((b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode()))
        elif kind in world.tokens:  # a key or token is no way into the socket
            headers.append((b"authorization", f"Bearer {world.tokens[kind]}".encode()))

        async def connect() -> bool:
            socket = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
            connected, _ = await socket.connect(timeout=5)
            if connected:
                await socket.disconnect()
            return connected

        return async_to_sync(connect)()

    found = {kind: opens(kind) for kind in KINDS}
    assert found == {kind: kind in SESSIONS for kind in KINDS}
    assert not opens(SUSPENDED)
