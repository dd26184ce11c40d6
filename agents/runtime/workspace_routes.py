"""The runtime's routes for the console's workspace files and commands (``wire/workspace.py``):

* ``GET /files?path=<dir>``: a directory's entries, and the workspace's size;
* ``GET /file?path=<file>``: a file's bytes, streamed;
* ``PUT /file?path=<file>``: write a file from the body, streamed, within the limits the
  console sends in ``X-Workspace-File-Limit`` and ``X-Workspace-Size-Limit`` (bytes);
* ``DELETE /file?path=<path>[&recursive=true]``: delete a file, symlink or directory;
* ``POST /exec``: run a command (``agents/runtime/commands.py``).

The runtime trusts whoever reaches it, as for chat: only the console does (its socket, a
microVM's forwarded loopback port, or the host's agent relay, which checks a signed token).
Refusals are in the console's error shape, with the status and code the console passes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents.runtime.commands import CommandRefused, exec_parse, exec_run
from agents.runtime.files import READ_CHUNK, FileRefused, Workspace
from wire.workspace import (
    FILE_LIMIT_HEADER,
    ROUTE_EXEC,
    ROUTE_FILE,
    ROUTE_FILES,
    WORKSPACE_LIMIT_HEADER,
)

__all__ = ["WORKSPACE_KEY", "WorkspaceRoutes", "workspace_routes_add"]

log = logging.getLogger("agents.runtime.workspace")


@dataclass
class WorkspaceRoutes:
    workspace: Workspace
    environment: dict[str, str]
    # One upload at a time: each checks the workspace's size against its limit, which two
    # at once would both pass.
    uploads: asyncio.Lock


WORKSPACE_KEY = web.AppKey("workspace", WorkspaceRoutes)


def _refusal(status: int, code: str, message: str, details: dict[str, Any] | None = None):
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status)


def _refused(exc: FileRefused) -> web.Response:
    return _refusal(exc.status, exc.code, exc.message, exc.details)


def _path(request: web.Request) -> str:
    return request.query.get("path", "")


def _limit(request: web.Request, header: str) -> int | None:
    raw = request.headers.get(header, "")
    return int(raw) if raw.isdigit() else None


async def files_list(request: web.Request) -> web.StreamResponse:
    routes = request.app[WORKSPACE_KEY]
    try:
        listing = await asyncio.to_thread(routes.workspace.listing, _path(request))
    except FileRefused as exc:
        return _refused(exc)
    return web.json_response(listing)


async def file_read(request: web.Request) -> web.StreamResponse:
    routes = request.app[WORKSPACE_KEY]
    try:
        opened = await asyncio.to_thread(routes.workspace.open_read, _path(request))
    except FileRefused as exc:
        return _refused(exc)
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "X-Workspace-Path": json.dumps(opened.path),
            }
        )
        response.content_length = opened.size
        await response.prepare(request)
        sent = 0
        # Never more than fstat said at the open: a file that grows meanwhile is cut there.
        while sent < opened.size:
            chunk = await asyncio.to_thread(os.read, opened.fd, min(READ_CHUNK, opened.size - sent))
            if not chunk:  # it shrank meanwhile: the length sent cannot be kept
                log.warning("%s shrank while it was read; the answer is cut short", opened.path)
                raise ConnectionResetError("the file shrank while it was read")
            sent += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(opened.fd)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def file_write(request: web.Request) -> web.StreamResponse:
    routes = request.app[WORKSPACE_KEY]
    file_limit = _limit(request, FILE_LIMIT_HEADER)
    workspace_limit = _limit(request, WORKSPACE_LIMIT_HEADER)
    if file_limit is None or workspace_limit is None:
        return _refusal(
            400,
            "invalid_request",
            f"an upload needs {FILE_LIMIT_HEADER} and {WORKSPACE_LIMIT_HEADER} (bytes)",
        )
    async with routes.uploads:
        try:
            upload = await asyncio.to_thread(
                routes.workspace.upload,
                _path(request),
                length=request.content_length,
                file_limit=file_limit,
                workspace_limit=workspace_limit,
            )
        except FileRefused as exc:
            return _refused(exc)
        try:
            async for chunk in _body(request):
                upload.write(chunk)
            written = await asyncio.to_thread(upload.finish)
        except FileRefused as exc:
            return _refused(exc)
        finally:
            upload.abort()
    log.info("wrote %s (%d bytes)", written["path"], written["size"])
    return web.json_response(written, status=200 if written["replaced"] else 201)


async def file_delete(request: web.Request) -> web.StreamResponse:
    routes = request.app[WORKSPACE_KEY]
    recursive = request.query.get("recursive", "").lower() in ("1", "true", "yes")
    try:
        deleted = await asyncio.to_thread(
            routes.workspace.delete, _path(request), recursive=recursive
        )
    except FileRefused as exc:
        return _refused(exc)
    log.info("deleted %s %s", deleted["type"], deleted["path"])
    return web.json_response(deleted)


async def command_exec(request: web.Request) -> web.StreamResponse:
    routes = request.app[WORKSPACE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _refusal(400, "malformed_body", "the body is not valid JSON")
    try:
        command = exec_parse(body)
    except CommandRefused as exc:
        return _refusal(400, "invalid_request", exc.message, exc.details)
    try:
        cwd = await asyncio.to_thread(routes.workspace.directory, command.cwd)
    except FileRefused as exc:
        return _refused(exc)
    result = await exec_run(command, cwd=cwd, env=routes.environment)
    log.info(
        "ran a command: exit code %s in %d ms%s",
        result["exit_code"],
        result["duration_ms"],
        " (timed out)" if result["timed_out"] else "",
    )
    return web.json_response(result)


def workspace_routes_add(
    app: web.Application, workspace: Workspace, environment: dict[str, str]
) -> None:
    """Serve the workspace routes of ``workspace`` on ``app``; commands get ``environment``."""
    app[WORKSPACE_KEY] = WorkspaceRoutes(workspace, environment, asyncio.Lock())
    app.router.add_get(ROUTE_FILES, files_list)
    app.router.add_get(ROUTE_FILE, file_read)
    app.router.add_put(ROUTE_FILE, file_write)
    app.router.add_delete(ROUTE_FILE, file_delete)
    app.router.add_post(ROUTE_EXEC, command_exec)
