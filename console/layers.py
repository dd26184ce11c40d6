"""The channel layer of a web process without Redis."""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer

__all__ = ["SweptInMemoryChannelLayer"]


class SweptInMemoryChannelLayer(InMemoryChannelLayer):
    """Channels' in-memory layer, with its sweep for expired messages and group memberships
    run at most once a second.

    Channels sweeps on every ``send`` to a group and every ``receive``, walking every channel
    and every membership of every group. With one group per chat socket, each chunk of a reply
    (one group send, one receive) cost two walks over all the process's sockets: with 5,000 of
    them, ~5 ms of CPU per chunk. Messages expire after a minute and memberships after a day,
    so sweeping once a second changes nothing a socket can see.
    """

    sweep_seconds = 1.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._swept = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept >= self.sweep_seconds:
            self._swept = now
            super()._clean_expired()
