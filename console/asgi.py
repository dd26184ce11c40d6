"""ASGI entry points.

``application`` (daphne, the web process): HTTP through Django (the LLM gateway through its own
app), WebSockets through Channels. ``gateway_application`` (uvicorn, the gateway process that
agents call): the same HTTP routes, no WebSockets.
"""

from __future__ import annotations

import gc
import os
import sys

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

gateway_application = ProtocolTypeRouter({"http": http_app})

# What is loaded by now (Django, the apps, their modules) lives as long as the process: kept out
# of the collector's reach, a full collection walks only what requests made, a few ms instead of
# ~50 ms that every call in flight would wait for.
gc.freeze()
# What requests and sockets keep (5,000 open chat sockets, say) would otherwise make the
# collector's full passes run every few seconds, each stopping the process for 0.2-1.5 s to walk
# every socket's objects: collect the young often, the old rarely.
gc.set_threshold(50_000, 20, 100)
# Sync code (the ORM) runs in a thread beside the event loop, and the two take turns at the GIL.
# Each query lets the GIL go and must wait to get it back, for as long as Python's switch
# interval (5 ms) when the loop is busy: a chat turn's dozen queries then took tens of ms while
# the loop streamed other replies, and every turn behind it waited for them. At 0.5 ms, a
# turn's start waits a few ms and the loop's chunks hardly more.
sys.setswitchinterval(0.0005)
