"""``manage.py create_api_key USERNAME [--scope read,write,admin] [--expires-in-days N]``: print
a new API key, once."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from console.models import ApiKey, User
from console.services import api_key_create, quota_get
from plumbing.errors import ConsoleError, Forbidden


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
            "--scope",
            action="append",
            dest="scopes",
            metavar="SCOPE",
            help=(
                f"A scope of the key, one of {', '.join(ApiKey.Scope.values)}: repeat it, or give "
                "a comma list (default: read and write). Only a staff user's key may have admin."
            ),
        )
        parser.add_argument(
            "--expires-in-days",
            type=int,
            default=None,
            help="Expire the key after this many days (default: never).",
        )

    def handle(self, *args: object, **options: object) -> None:
        username = str(options["username"])
        days = options["expires_in_days"]
        if days is not None and int(days) < 1:
            raise CommandError("--expires-in-days must be at least 1")
        scopes = _scopes(options["scopes"])
        expires = timezone.now() + timedelta(days=int(days)) if days else None
        try:
            with transaction.atomic():  # a refused key leaves no new user behind
                user = User.objects.filter(username=username).first()
                if user is None:
                    if not options["create_user"]:
                        raise CommandError(f"no user {username!r}; pass --create-user to create it")
                    user = User.objects.create_user(username=username)
                quota_get(user=user)
                key, raw = api_key_create(
                    user=user, name=str(options["name"]), expires_at=expires, scopes=scopes
                )
        except Forbidden as exc:
            raise CommandError(
                f"{exc.message}, and {username} is not an active staff user. Make them an operator "
                "in the admin (Users → Staff status), or leave out --scope admin."
            ) from exc
        except ConsoleError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(raw)
        self.stderr.write(
            f"API key {key.prefix}… for {username}, scopes {', '.join(key.scopes)}; "
            "it will not be shown again."
        )


def _scopes(given: object) -> list[str] | None:
    """``--scope read --scope write,admin`` → the scopes named; None when none was given."""
    if not given:
        return None
    return [s.strip() for item in given for s in str(item).split(",") if s.strip()]
