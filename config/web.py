"""``python -m config.web``, with daphne's arguments: the web process, daphne on uvloop.

Daphne runs Twisted on an asyncio event loop that it makes as its server module loads. Made by
uvloop (as the gateway's is, by uvicorn), the loop's own work, each callback, task step and
socket read, costs a fraction of the standard library's: a streamed chat chunk, which is mostly
such steps (the runtime's socket, the turn, the channel layer, the consumer), cost the web
process about a quarter less CPU.
"""

from __future__ import annotations

import asyncio

import uvloop

__all__ = ["main"]


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Imported after the policy is set: daphne's server module makes its loop as it loads.
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
