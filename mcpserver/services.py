"""Who may call the MCP server, and the record of every call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from console.api.permissions import credential_scopes
from console.authentication import token_credential
from console.models import ApiKey, User
from console.services import request_admit
from mcpserver.models import ToolCall
from plumbing.errors import Forbidden

ADMIN = ApiKey.Scope.ADMIN.value

__all__ = ["Caller", "caller_admit", "caller_for_agent", "caller_for_token", "tool_call_record"]

# Arguments whose values never reach the log: a user's own Anthropic key, say.
_SECRET_PARTS = ("key", "secret", "password", "token")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a user, the API key they came with (None: a JWT), and the scopes that
    credential carries within their role, as ``console.api.permissions`` reckons them."""

    user: User
    key: ApiKey | None
    scopes: frozenset[str]
    transport: str

    @property
    def operator(self) -> bool:
        """Operator powers, as ``is_operator`` grants them on the REST API."""
        return ADMIN in self.scopes


def caller_for_token(token: str, *, transport: str) -> Caller:
    """The caller a bearer token (an API key or a JWT) stands for; else ``NotAuthenticated``."""
    user, key = token_credential(token)
    return Caller(user=user, key=key, scopes=credential_scopes(user, key), transport=transport)


def caller_for_agent(owner: User, *, transport: str) -> Caller:
    """An agent acting as its ``owner`` through the console's MCP tools: the owner's scopes
    without ``admin``, so that an agent of an operator never holds operator powers."""
    scopes = credential_scopes(owner, None) - {ADMIN}
    return Caller(user=owner, key=None, scopes=scopes, transport=transport)


def caller_admit(caller: Caller, *, scopes: tuple[str, ...]) -> None:
    """Refuse a call whose credential lacks one of ``scopes`` (``Forbidden``, as the REST API's
    ``HasScope`` and ``IsOperator`` do), then count it against the caller's request rate
    (``RateLimited`` past it), as every REST request is counted."""
    for needed in scopes:
        if needed in caller.scopes:
            continue
        if needed == ADMIN:
            raise Forbidden(
                "this is for operators: a staff user with the admin scope",
                details={"required_scope": ADMIN},
            )
        raise Forbidden(
            f"this credential lacks the {needed} scope", details={"required_scope": needed}
        )
    request_admit(user_id=caller.user.pk, api_key=caller.key)


def _masked(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: "***" if any(part in name.lower() for part in _SECRET_PARTS) else value
        for name, value in arguments.items()
    }


def tool_call_record(
    *,
    caller: Caller,
    tool: str,
    arguments: Mapping[str, Any],
    error: tuple[str, str] | None,
    duration_ms: int,
) -> ToolCall:
    """Record a call of ``tool`` by ``caller``; ``error`` is its code and message when it was
    refused or failed."""
    code, message = error or ("", "")
    return ToolCall.objects.create(
        user=caller.user,
        api_key=caller.key,
        transport=caller.transport,
        tool=tool[:200],
        arguments=_masked(arguments),
        outcome=ToolCall.Outcome.ERROR if error else ToolCall.Outcome.OK,
        error_code=code[:64],
        error_message=message[:500],
        duration_ms=duration_ms,
    )
