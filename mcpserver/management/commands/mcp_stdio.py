"""``manage.py mcp_stdio --key ac_…``: the MCP server over stdin and stdout, for desktop clients
that start their servers as commands (Claude Desktop), acting as the key's user."""

from __future__ import annotations

import os
from typing import Any

import anyio
from asgiref.sync import sync_to_async
from django.core.management.base import BaseCommand, CommandError, CommandParser
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from mcpserver.models import ToolCall
from mcpserver.server import console_mcp_server
from mcpserver.services import Caller, caller_for_token
from plumbing.errors import NotAuthenticated

KEY_VARIABLE = "CONSOLE_MCP_KEY"


class Command(BaseCommand):
    help = (
        "Serve the console's MCP tools over stdin/stdout as the user of an API key (or a JWT): "
        "its scopes and tenancy apply, as on the REST API and at /mcp."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--key",
            default=os.environ.get(KEY_VARIABLE, ""),
            help=f"The console API key (ac_…) to act with; default: ${KEY_VARIABLE}.",
        )

    def handle(self, *args: object, **options: Any) -> None:
        key = options["key"].strip()
        if not key:
            raise CommandError(f"give an API key: --key ac_… (or set {KEY_VARIABLE})")
        try:
            caller_for_token(key, transport=ToolCall.Transport.STDIO)
        except NotAuthenticated as exc:
            raise CommandError(exc.message) from exc

        async def caller_of(ctx: ServerRequestContext[Any]) -> Caller | None:
            # Afresh for each call: a key revoked meanwhile stops working at once.
            try:
                return await sync_to_async(caller_for_token)(
                    key, transport=ToolCall.Transport.STDIO
                )
            except NotAuthenticated:
                return None

        server = console_mcp_server(caller_of)

        async def serve() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(serve)
