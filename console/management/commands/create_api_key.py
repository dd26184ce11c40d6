"""``manage.py create_api_key USERNAME [--create-user]``: print a new API key, once."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from console.models import User
from console.services import api_key_create, quota_get


class Command(BaseCommand):
    help = "Create an API key for a user and print it. The key is shown only this once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="Create the user (without a password) if it does not exist.",
        )
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument(
            "--expires-in-days",
            type=int,
            default=None,
            help="Expire the key after this many days (default: never).",
        )

    def handle(self, *args: object, **options: object) -> None:
        username = str(options["username"])
        user = User.objects.filter(username=username).first()
        if user is None:
            if not options["create_user"]:
                raise CommandError(f"no user {username!r}; pass --create-user to create it")
            user = User.objects.create_user(username=username)
        quota_get(user=user)
        days = options["expires_in_days"]
        if days is not None and int(days) < 1:
            raise CommandError("--expires-in-days must be at least 1")
        expires = timezone.now() + timedelta(days=int(days)) if days else None
        key, raw = api_key_create(user=user, name=str(options["name"]), expires_at=expires)
        self.stdout.write(raw)
        self.stderr.write(f"API key {key.prefix}… for {username}; it will not be shown again.")
