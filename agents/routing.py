"""WebSocket routes served by Channels (the chat consumer joins them here)."""

from __future__ import annotations

websocket_urlpatterns: list = []
