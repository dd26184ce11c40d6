"""WebSocket routes served by Channels."""

from __future__ import annotations

from django.urls import path

from agents.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi(), name="chat-socket"),
]
