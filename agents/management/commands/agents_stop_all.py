"""``manage.py agents_stop_all [--wait SECONDS]``: stop every agent, keeping their workspaces."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import Agent
from agents.services import agents_stop_all
from plumbing.errors import ConsoleError


class Command(BaseCommand):
    help = (
        "Stop every pending, starting or running agent (their workspaces are kept), through "
        "the console's workers: run it while the console runs, e.g. before Ctrl-C on make run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="How long to wait for the sandboxes to stop (default 60; 0: do not wait).",
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            stopped = agents_stop_all()
        except ConsoleError as exc:
            raise CommandError(f"{exc.message} (is the console running?)") from exc
        ids = [agent.pk for agent in stopped]
        self.stdout.write(f"Agents to stop: {len(ids)}")
        wait = float(options["wait"])  # type: ignore[arg-type]
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        stopping = Agent.objects.filter(pk__in=ids, status=Agent.Status.STOPPING)
        while stopping.exists():
            if time.monotonic() > deadline:
                left = ", ".join(str(pk) for pk in stopping.values_list("pk", flat=True))
                raise CommandError(f"still stopping after {wait:g} s: {left}")
            time.sleep(0.2)
        self.stdout.write(f"Stopped: {len(ids)}")
