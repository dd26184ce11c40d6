"""Daphne's frames are written at once when nothing waits before them, in order otherwise."""

from __future__ import annotations

import sys
import types

import pytest

from plumbing import daphne_frames


class _Connection:
    """Twisted's TCP server connection, as far as the write path sees it."""

    TLS = False
    connected = True
    disconnecting = False
    _writeDisconnected = False

    def __init__(self, takes: list[int | Exception]) -> None:
        self.takes = takes  # what each send takes: bytes, or an error (a lost connection)
        self.sent: list[bytes] = []
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""
        self.offset = 0

    def writeSomeData(self, data: bytes) -> int | Exception:
        take = self.takes.pop(0)
        if isinstance(take, Exception):
            return take
        self.sent.append(bytes(data[:take]))
        return min(take, len(data))

    def write(self, data: bytes) -> None:  # Twisted's: buffer it, write on a later loop turn
        self._tempDataBuffer.append(data)


@pytest.fixture
def connection_class(monkeypatch: pytest.MonkeyPatch) -> type[_Connection]:
    server = type("Server", (_Connection,), {})
    protocol = types.SimpleNamespace(hltype=None, hlval=None)
    monkeypatch.setitem(sys.modules, "twisted.internet.tcp", types.SimpleNamespace(Server=server))
    monkeypatch.setitem(sys.modules, "autobahn.websocket.protocol", protocol)
    daphne_frames.daphne_frames_lighten()
    daphne_frames.daphne_frames_lighten()  # once is enough: a second call changes nothing
    assert protocol.hltype("frame", bold=True) == "frame"
    return server


def test_an_idle_connection_sends_at_once(connection_class: type[_Connection]) -> None:
    conn = connection_class([100, 100])
    conn.write(b"one")
    conn.write(b"two")

    assert conn.sent == [b"one", b"two"]
    assert conn._tempDataBuffer == []


def test_what_the_socket_does_not_take_is_buffered_and_so_is_what_follows(
    connection_class: type[_Connection],
) -> None:
    conn = connection_class([2])
    conn.write(b"hello")
    conn.write(b"next")  # behind buffered bytes: buffered too, in order

    assert conn.sent == [b"he"]
    assert conn._tempDataBuffer == [b"llo", b"next"]


def test_a_lost_or_encrypted_connection_takes_twisteds_path(
    connection_class: type[_Connection],
) -> None:
    lost = connection_class([ConnectionResetError()])
    lost.write(b"frame")
    tls = connection_class([])
    tls.TLS = True
    tls.write(b"frame")

    assert lost._tempDataBuffer == [b"frame"]  # Twisted meets the error again and closes it
    assert tls._tempDataBuffer == [b"frame"]
