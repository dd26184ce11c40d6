"""``manage.py sandbox_relay``: serve this sandbox host's agents to the console's other machines."""

from __future__ import annotations

from aiohttp import web
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from agents.models import ServingProcess
from agents.relay import relay_app
from agents.services.processes import heartbeat_start


class Command(BaseCommand):
    help = (
        "Run this sandbox host's agent relay on SANDBOX_RELAY_LISTEN: the web and gateway "
        "machines reach the host's agents through it (SANDBOX_RELAY_URL), with tokens of "
        "SANDBOX_RELAY_KEY. Run it beside the host's worker."
    )

    def handle(self, *args: object, **options: object) -> None:
        if not settings.SANDBOX_RELAY_KEY:
            raise CommandError("SANDBOX_RELAY_KEY (or SANDBOX_RELAY_KEY_FILE) is required")
        host, _, port = settings.SANDBOX_RELAY_LISTEN.rpartition(":")
        app = relay_app(
            key=settings.SANDBOX_RELAY_KEY,
            host_name=settings.SANDBOX_HOST_NAME,
            token_seconds=settings.SANDBOX_RELAY_TOKEN_SECONDS,
            timeout=settings.AGENT_CHAT_TIMEOUT_SECONDS,
            metrics_token=settings.METRICS_BEARER_TOKEN,
        )
        heartbeat_start(ServingProcess.Kind.RELAY)
        self.stdout.write(
            f"Agent relay of host {settings.SANDBOX_HOST_NAME} on {settings.SANDBOX_RELAY_LISTEN}"
        )
        web.run_app(
            app,
            host=host.strip("[]"),
            port=int(port),
            access_log=None,
            print=None,
            # A caller gone (a stopped turn) closes the runtime's connection at once, not at the
            # next chunk: the runtime then ends Claude's call, as when dialled directly.
            handler_cancellation=True,
        )
