"""The relay's tokens: one request of one agent, for tens of seconds, under one key."""

from __future__ import annotations

import pytest

from wire.relaytoken import token_check, token_make

KEY = "a-deployments-relay-key-0123456789abcdef"
AGENT = "4e0a4764-06e9-4915-87e5-6b6ea65e8334"
REQUEST = {"agent_id": AGENT, "method": "POST", "path": f"/{AGENT}/v1/agent/chat"}
NOW = 1_800_000_000.0


def _check(token: str, key: str = KEY, now: float = NOW, **request: str) -> str | None:
    return token_check(key, token, **(REQUEST | request), ttl=30, now=now)


def test_a_token_lets_its_request_through_until_it_expires():
    token = token_make(KEY, **REQUEST, ttl=30, now=NOW)
    assert _check(token) is None
    assert _check(token, now=NOW + 30) is None
    assert _check(token, now=NOW + 31) == "an expired token"


@pytest.mark.parametrize(
    "other",
    [
        {"agent_id": "5f0a4764-06e9-4915-87e5-6b6ea65e8334"},
        {"method": "GET"},
        {"path": f"/{AGENT}/metrics"},
        {"path": f"/{AGENT}/v1/agent/chat?x=1"},
    ],
)
def test_a_token_is_for_its_agent_method_and_path_only(other):
    token = token_make(KEY, **REQUEST, ttl=30, now=NOW)
    assert _check(token, **other) == "a token of another key, agent or request"


def test_a_token_of_another_key_is_refused():
    token = token_make("another-deployments-key-0123456789abcdef", **REQUEST, ttl=30, now=NOW)
    assert _check(token) == "a token of another key, agent or request"


def test_a_token_living_longer_than_the_lifetime_is_refused():
    assert _check(token_make(KEY, **REQUEST, ttl=3600, now=NOW)) == "a token that lives too long"


@pytest.mark.parametrize("token", ["", "abc", "1800000030.", "x.y", "1800000030." + "0" * 63])
def test_a_missing_or_malformed_token_is_refused(token):
    assert _check(token) in {"no token", "a malformed token"}


def test_a_token_tampered_with_is_refused():
    expires, _, mac = token_make(KEY, **REQUEST, ttl=30, now=NOW).partition(".")
    assert _check(f"{int(expires) + 3}.{mac}") == "a token of another key, agent or request"
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert _check(f"{expires}.{flipped}") == "a token of another key, agent or request"


def test_no_key_makes_no_token():
    with pytest.raises(ValueError, match="empty"):
        token_make("", **REQUEST, ttl=30)
