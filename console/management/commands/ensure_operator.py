"""``manage.py ensure_operator``: create the operator account once, printing its login."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from console.services import operator_ensure


class Command(BaseCommand):
    help = "Create a superuser if none exists and print its login (only when it is created)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: object, **options: object) -> None:
        password = operator_ensure(username=str(options["username"]))
        if password is None:
            self.stdout.write(
                "Operator account: exists (reset its password with "
                "`.venv/bin/python manage.py changepassword <name>`)."
            )
        else:
            self.stdout.write(
                f"Operator account created. Log in as {options['username']} "
                f"with password {password} (shown only this once)."
            )
