"""What daphne does for each WebSocket frame it sends, cut to the frame's write.

Twisted (daphne's server) never writes in ``transport.write``: it buffers the bytes and asks the
event loop to watch the socket for writability (an ``epoll_ctl``), writes on the loop's next
turn, then stops watching (another ``epoll_ctl``). For a chat socket that sends one small frame
per chunk of a reply, that was two system calls, a loop turn and a dozen Python calls per frame.
Here a plain TCP connection whose buffer is empty sends the bytes at once, as asyncio's
transports do; what the socket does not take (a full send buffer, an error) goes to Twisted's
buffer and its usual path, in order.

Autobahn (daphne's WebSocket protocol) also builds the arguments of a debug log line for every
frame, logged or not: the name of its method and two values, each coloured through click, about
a tenth of what a chat chunk cost the web process. Its frames' log lines get those values as
they are, to be formatted only if a line is ever written.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["daphne_frames_lighten"]


def _as_is(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


def daphne_frames_lighten() -> None:
    """Send frames at once and skip autobahn's colouring of its frames' log values, when
    daphne's Twisted and autobahn are loaded (daphne loads them before the application); else
    nothing."""
    if autobahn_protocol := sys.modules.get("autobahn.websocket.protocol"):
        autobahn_protocol.hltype = autobahn_protocol.hlval = _as_is
    tcp = sys.modules.get("twisted.internet.tcp")
    if tcp is None or getattr(tcp.Server.write, "at_once", False):
        return
    buffered_write = tcp.Server.write

    def write(self: Any, data: bytes) -> None:
        idle = (
            not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
        )
        if idle and type(data) is bytes and data:
            sent = self.writeSomeData(data)  # 0 when the socket is full; an error when lost
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
        buffered_write(self, data)  # an error is met again, and handled, on the usual path

    write.at_once = True  # type: ignore[attr-defined]
    tcp.Server.write = write
