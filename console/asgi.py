"""ASGI entry point: HTTP through Django (the LLM gateway through its own app), WebSockets
through Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs Django set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from agents.routing import websocket_urlpatterns  # noqa: E402
from console.gateway import GatewayApp  # noqa: E402

GATEWAY_PATH = "/gateway/v1/messages"
_gateway = GatewayApp()


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """The gateway's one route goes to its own app; everything else to Django."""
    if scope["path"] == GATEWAY_PATH:
        await _gateway(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
