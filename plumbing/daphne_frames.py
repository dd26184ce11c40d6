"""What daphne does for each WebSocket frame it sends, cut to the frame's write.

Twisted (daphne's server) never writes in ``transport.write``: it buffers the bytes and asks the
event loop to watch the socket for writability (an ``epoll_ctl``), writes on the loop's next
turn, then stops watching (another ``epoll_ctl``). For a chat socket that sends one small frame
per chunk of a reply, that was two system calls, a loop turn and a dozen Python calls per frame.
Here a plain TCP connection whose buffer is empty sends the bytes at once, as asyncio's
transports do; what the socket does not take (a full send buffer, an error) goes to Twisted's
buffer and its usual path, in order.

Autobahn (daphne's WebSocket protocol) also builds the arguments of a debug log line for every
frame, logged or not, colouring three of them through click: a tenth of a frame's cost. Its
log lines are left uncoloured, which makes those arguments plain strings.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["daphne_frames_lighten"]


def daphne_frames_lighten() -> None:
    """Send frames at once and leave autobahn's log lines uncoloured, when daphne's Twisted and
    autobahn are loaded (daphne loads them before the application); else nothing."""
    if autobahn_util := sys.modules.get("autobahn.util"):
        autobahn_util._HAS_CLICK = False
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
