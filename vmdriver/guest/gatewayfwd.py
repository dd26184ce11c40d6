"""``python -I gatewayfwd.py HOST PORT``: carries one guest connection to the console's gateway.

Host side of the qemu backend. QEMU's user network runs it (``guestfwd=...-cmd:``) for each
connection the guest opens to the gateway address, with that connection as its stdin/stdout,
and it relays the bytes to HOST:PORT and back. (A ``guestfwd`` to a ``tcp:`` chardev instead
carries a single connection, opened when QEMU starts, which a console restart would end.)
It uses only the standard library and is run by path, so it starts fast and imports nothing.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

_CHUNK = 65536


def relay(guest: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until the guest's side ends (when the gateway's ends first, the
    guest is told and may still finish sending)."""
    selector = selectors.DefaultSelector()
    selector.register(guest, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, guest)
    while True:
        for key, _ in selector.select():
            source: socket.socket = key.fileobj  # type: ignore[assignment]
            target: socket.socket = key.data
            try:
                data = source.recv(_CHUNK)
                if data:
                    target.sendall(data)
                    continue
                if source is guest:
                    return
                selector.unregister(source)
                target.shutdown(socket.SHUT_WR)
            except OSError:
                return


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    # stderr is the guest's connection too: nothing may be written to it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    guest = socket.socket(fileno=0)
    try:
        upstream = socket.create_connection((host, port), timeout=10)
    except OSError:
        return 1
    upstream.settimeout(None)
    with guest, upstream:
        relay(guest, upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
