"""The security tests' shared world: users of every kind of credential, and alice's objects."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import override_settings

from tests.security.world import build_world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """The world of test_scopes.py and test_protocol.py (a module with a ``world`` of its own
    uses that). Built once for the module, in a transaction rolled back at its end; every cell
    runs in a savepoint of its own, rolled back too, so no cell sees another's effects."""
    fast = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with (
        django_db_blocker.unblock(),
        override_settings(PASSWORD_HASHERS=fast),
        transaction.atomic(),
    ):
        built = build_world()
        yield built
        transaction.set_rollback(True)
