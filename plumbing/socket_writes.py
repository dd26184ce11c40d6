"""Daphne's socket writes, made at once.

Twisted (daphne's server) never writes in ``transport.write``: it buffers the bytes and asks the
event loop to watch the socket for writability (an ``epoll_ctl``), writes on the loop's next
turn, then stops watching (another ``epoll_ctl``). For a chat socket that sends one small frame
per chunk of a reply, that was two system calls, a loop turn and a dozen Python calls per frame,
about a third of what a chunk cost the web process. Here a plain TCP connection whose buffer is
empty sends the bytes at once, as asyncio's transports do; what the socket does not take (a
full send buffer, an error) goes to Twisted's buffer and its usual path, in order.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["twisted_write_at_once"]


def twisted_write_at_once() -> None:
    """Make Twisted's TCP server connections send at once when nothing is buffered, when
    Twisted's TCP transport is loaded (daphne loads it before the application); else nothing."""
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
