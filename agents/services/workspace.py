"""An agent's workspace for its owner: list, download, upload and delete files, and run commands,
through the agent's runtime (``agents/runtime/workspace_routes.py``) on the same path as chat
(``sandbox.runtime_session``: its socket, a microVM's port, or its host's agent relay).

Only the owner reaches an agent's workspace (anyone else: the agent does not exist), and only
while it runs (else 409). Each path is checked here (``wire.workspace``) before it is sent, and
again by the runtime, which resolves it beneath the workspace. An upload is bounded by the
owner's quota (``max_file_bytes``, ``max_workspace_bytes``): checked here against its size, and
by the runtime against the bytes it receives and the workspace's size. Every command run, upload
and delete is written to the audit log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings

from agents import sandbox
from agents.models import Agent
from agents.services.chat import agent_for_user
from console.models import Quota, User
from console.services import audit_record, user_check_active
from plumbing.errors import (
    AgentNotRunning,
    AgentUnavailable,
    BadRequest,
    Conflict,
    ConsoleError,
    NotFound,
    PayloadTooLarge,
)
from wire.jsonbound import loads
from wire.workspace import (
    FILE_LIMIT_HEADER,
    ROUTE_EXEC,
    ROUTE_FILE,
    ROUTE_FILES,
    WORKSPACE_LIMIT_HEADER,
    WorkspacePathError,
    workspace_path,
)

__all__ = [
    "DEFAULT_EXEC_TIMEOUT",
    "FileTooLarge",
    "InvalidPath",
    "RuntimeFile",
    "WorkspaceFull",
    "workspace_agent",
    "workspace_delete",
    "workspace_exec",
    "workspace_file_open",
    "workspace_list",
    "workspace_path_checked",
    "workspace_upload",
]

log = logging.getLogger(__name__)

DEFAULT_EXEC_TIMEOUT = 60.0
# How long a file route waits for the runtime's next bytes.
_FILE_TIMEOUT = 60.0
# The most of a runtime's JSON answer read (it runs the agent's code: it is not trusted): a
# listing's thousand entries, or a command's two outputs, each escaped at worst 6 bytes a byte.
_ANSWER_BYTES = 16 * 1024 * 1024


def _answer_limit() -> int:
    return _ANSWER_BYTES + 12 * settings.AGENT_EXEC_OUTPUT_BYTES


class InvalidPath(BadRequest):
    code = "invalid_path"


class FileNotFound(NotFound):
    code = "file_not_found"


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"


class WorkspaceFull(PayloadTooLarge):
    code = "workspace_full"


class IsADirectory(Conflict):
    code = "is_a_directory"


class NotADirectory(Conflict):
    code = "not_a_directory"


class NotAFile(Conflict):
    code = "not_a_file"


class DirectoryNotEmpty(Conflict):
    code = "directory_not_empty"


class ChangedMeanwhile(Conflict):
    code = "changed_meanwhile"


class NoSpace(ConsoleError):
    status, code = 507, "no_space"


# The runtime's refusals, by code; any other it answers is a runtime failure (502).
_REFUSALS: dict[str, type[ConsoleError]] = {
    cls.code: cls
    for cls in (
        InvalidPath,
        FileNotFound,
        FileTooLarge,
        WorkspaceFull,
        IsADirectory,
        NotADirectory,
        NotAFile,
        DirectoryNotEmpty,
        ChangedMeanwhile,
        NoSpace,
        BadRequest,
    )
}


def workspace_path_checked(raw: str) -> str:
    """``raw`` as a workspace path, in its one spelling; else ``InvalidPath``."""
    try:
        return workspace_path(raw)
    except WorkspacePathError as exc:
        raise InvalidPath(str(exc), details={"path": raw[:300]}) from None


def workspace_agent(*, user: User, agent_id: object) -> Agent:
    """The owner's running agent; ``AgentNotFound`` for anyone else's (operators included: a
    workspace is its owner's), ``AgentNotRunning`` (409) while it does not run."""
    agent = agent_for_user(user=user, agent_id=agent_id)
    if agent.status != Agent.Status.RUNNING or not agent.endpoint:
        raise AgentNotRunning(
            f"the agent is {agent.status}: its workspace can be reached only while it runs "
            "(POST /api/v1/agents/{id}/start)",
            details={"status": agent.status},
        )
    return agent


def _refusal(status: int, body: Any) -> ConsoleError:
    """The runtime's refusal as the console's: its code when the console knows it."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or status >= 500 or status < 400:
        return AgentUnavailable(f"the agent's runtime answered {status}")
    code, message = str(error.get("code", "")), str(error.get("message", ""))[:1000]
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    cls = _REFUSALS.get(code)
    if cls is None or cls.status != status:
        return AgentUnavailable(f"the agent's runtime answered {status}: {message}")
    return cls(message, details=details)


async def _answer(response: aiohttp.ClientResponse) -> Any:
    """The runtime's JSON answer, through the bounded parser; ``ValueError`` if it is not."""
    limit, raw = _answer_limit(), bytearray()
    async for chunk in response.content.iter_any():
        raw += chunk
        if len(raw) > limit:
            raise ValueError(f"the runtime's answer is over {limit} bytes")
    return loads(raw)


async def _refused(response: aiohttp.ClientResponse) -> ConsoleError:
    try:
        body = await _answer(response)
    except (ValueError, aiohttp.ClientError):
        body = None
    return _refusal(response.status, body)


def _unreachable(exc: BaseException) -> AgentUnavailable:
    return AgentUnavailable(f"the agent's runtime could not be reached ({type(exc).__name__})")


async def _json(
    agent: Agent,
    method: str,
    route: str,
    *,
    timeout: float = _FILE_TIMEOUT,
    **kwargs: Any,
) -> dict[str, Any]:
    try:
        async with (
            sandbox.runtime_session(agent.endpoint, timeout=timeout) as client,
            client.request(method, route, **kwargs) as response,
        ):
            if response.status >= 400:
                raise await _refused(response)
            found = await _answer(response)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise _unreachable(exc) from exc
    if not isinstance(found, dict):
        raise AgentUnavailable("the agent's runtime answered something other than an object")
    return found


def _limits(quota: Quota) -> dict[str, int]:
    return {
        "max_file_bytes": quota.max_file_bytes,
        "max_workspace_bytes": quota.max_workspace_bytes,
    }


async def workspace_list(*, agent: Agent, path: str) -> dict[str, Any]:
    """The directory ``path`` of the agent's workspace: its entries and the workspace's size,
    with the owner's limits."""
    path = workspace_path_checked(path)
    listing = await _json(agent, "GET", ROUTE_FILES, params={"path": path})
    quota = await sync_to_async(user_check_active)(user=agent.owner)
    return {"agent_id": str(agent.pk), **listing, "limits": _limits(quota)}


@dataclass
class RuntimeFile:
    """A file being read from the runtime: its path, size and bytes (``chunks`` closes the
    connection once read; ``close`` does when it is not)."""

    path: str
    size: int
    _client: aiohttp.ClientSession
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(256 * 1024):
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        self._response.release()
        await self._client.close()


async def workspace_file_open(*, agent: Agent, path: str) -> RuntimeFile:
    """The file ``path`` of the agent's workspace, opened for reading."""
    path = workspace_path_checked(path)
    client = sandbox.runtime_session(agent.endpoint, timeout=_FILE_TIMEOUT)
    try:
        response = await client.get(ROUTE_FILE, params={"path": path})
    except (aiohttp.ClientError, TimeoutError) as exc:
        await client.close()
        raise _unreachable(exc) from exc
    if response.status != 200 or response.content_length is None:
        refusal = await _refused(response)
        response.release()
        await client.close()
        raise refusal
    return RuntimeFile(path, response.content_length, client, response)


async def _audit(user: User, agent: Agent, action: str, changes: Mapping[str, Any]) -> None:
    await sync_to_async(audit_record)(
        actor=user, action=action, target=agent, changes=dict(changes)
    )


def _check_size(quota: Quota, path: str, size: int) -> None:
    if size > quota.max_file_bytes:
        raise FileTooLarge(
            f"{path} is {size} bytes: a file may hold at most {quota.max_file_bytes} bytes",
            details={
                "path": path,
                "limit": "max_file_bytes",
                "limit_bytes": quota.max_file_bytes,
                "size": size,
            },
        )


async def workspace_upload(
    *, user: User, agent: Agent, path: str, size: int, body: AsyncIterator[bytes]
) -> dict[str, Any]:
    """Write ``body`` (``size`` bytes) to the file ``path``, replacing what is there, within
    the owner's quota: 413 ``file_too_large`` or ``workspace_full`` otherwise."""
    path = workspace_path_checked(path)
    quota = await sync_to_async(user_check_active)(user=user)
    _check_size(quota, path, size)
    headers = {
        FILE_LIMIT_HEADER: str(quota.max_file_bytes),
        WORKSPACE_LIMIT_HEADER: str(quota.max_workspace_bytes),
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
    }
    written = await _json(
        agent, "PUT", ROUTE_FILE, params={"path": path}, data=body, headers=headers
    )
    await _audit(
        user,
        agent,
        "agent.file_upload",
        {"path": (None, written.get("path", path)), "size": (None, written.get("size", size))},
    )
    return {"agent_id": str(agent.pk), **written}


async def workspace_delete(
    *, user: User, agent: Agent, path: str, recursive: bool
) -> dict[str, Any]:
    """Delete the file, symlink or directory ``path`` (a directory that is not empty only
    when ``recursive``)."""
    path = workspace_path_checked(path)
    await sync_to_async(user_check_active)(user=user)
    params = {"path": path, "recursive": "true" if recursive else "false"}
    deleted = await _json(agent, "DELETE", ROUTE_FILE, params=params)
    await _audit(
        user,
        agent,
        "agent.file_delete",
        {"path": (deleted.get("path", path), None), "type": (deleted.get("type"), None)},
    )
    return {"agent_id": str(agent.pk), **deleted}


async def workspace_exec(
    *,
    user: User,
    agent: Agent,
    argv: list[str] | None,
    command: str | None,
    cwd: str,
    timeout: float | None,
    output_limit: int | None,
) -> dict[str, Any]:
    """Run ``argv``, or the shell string ``command``, in the agent's sandbox (in ``cwd``, a
    workspace directory), for at most ``timeout`` seconds (``AGENT_EXEC_TIMEOUT_SECONDS`` at
    most), keeping ``output_limit`` bytes of each output (``AGENT_EXEC_OUTPUT_BYTES`` at most).
    Audited: who, which agent, what ran, its exit code, how long, and whether output was cut."""
    cwd = workspace_path_checked(cwd)
    await sync_to_async(user_check_active)(user=user)
    timeout = min(timeout or DEFAULT_EXEC_TIMEOUT, settings.AGENT_EXEC_TIMEOUT_SECONDS)
    ceiling = settings.AGENT_EXEC_OUTPUT_BYTES
    output_limit = min(output_limit or ceiling, ceiling)
    body: dict[str, Any] = {
        "cwd": cwd,
        "timeout_seconds": timeout,
        "output_limit_bytes": output_limit,
    }
    if command is not None:
        body["command"] = command
    else:
        body["argv"] = argv
    ran = argv if command is None else ["/bin/sh", "-c", command]
    try:
        # The runtime answers once the command is over: its time limit, and some to spare.
        result = await _json(agent, "POST", ROUTE_EXEC, json=body, timeout=timeout + 15)
    except ConsoleError as exc:
        if isinstance(exc, AgentUnavailable):  # it may have run: the log says it was asked
            with contextlib.suppress(Exception):
                await _audit(
                    user, agent, "agent.exec", {"argv": (None, ran), "error": (None, exc.message)}
                )
        raise
    await _audit(
        user,
        agent,
        "agent.exec",
        {
            "argv": (None, ran),
            "cwd": (None, cwd),
            "exit_code": (None, result.get("exit_code")),
            "duration_ms": (None, result.get("duration_ms")),
            "timed_out": (None, result.get("timed_out")),
            "truncated": (None, result.get("truncated")),
        },
    )
    return {"agent_id": str(agent.pk), **result}
