"""``/api/v1/agents/{id}/files`` and ``/api/v1/agents/{id}/exec``: an agent's workspace files and
commands, for its owner (``agents.services.workspace``).

* ``GET .../files?path=<dir>``: the directory's entries, the workspace's size and the limits;
* ``POST .../files?path=<dir>``: upload files into the directory (``multipart/form-data``, each
  part named ``file``);
* ``GET .../files/<path>``: download a file;
* ``PUT .../files/<path>``: upload a file, its content the raw body (or the one file of a
  ``multipart/form-data`` body);
* ``DELETE .../files/<path>[?recursive=true]``: delete a file, symlink or directory;
* ``POST .../exec``: run a command (``argv``, or a shell ``command``).

Reading (list, download) needs the ``read`` scope; the rest ``write``. Plain async views, as
chat's: a download streams from the runtime, and an upload to it, from the file the server
spooled the body to (on disk past ``FILE_UPLOAD_MAX_MEMORY_SIZE``), never whole in memory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import IO, Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.core.exceptions import TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from agents.serializers import validated
from agents.services.workspace import (
    workspace_agent,
    workspace_delete,
    workspace_exec,
    workspace_file_open,
    workspace_list,
    workspace_upload,
)
from agents.views import json_object_body
from console.authentication import request_user
from console.models import User
from plumbing.errors import BadRequest, ConsoleError, MethodNotAllowed, error_response

__all__ = ["ExecRequestSerializer", "agent_exec", "agent_file", "agent_files", "file_chunks"]

_CHUNK = 256 * 1024
_MULTIPART = "multipart/form-data"


class UnsupportedMediaType(ConsoleError):
    status, code = 415, "unsupported_media_type"


class ExecRequestSerializer(serializers.Serializer):
    argv = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=65536),
        required=False,
        min_length=1,
        max_length=4096,
    )
    command = serializers.CharField(required=False, trim_whitespace=False, max_length=65536)
    cwd = serializers.CharField(required=False, allow_blank=True, default="", max_length=4096)
    timeout_seconds = serializers.FloatField(required=False, min_value=0.001, max_value=3600)
    output_limit_bytes = serializers.IntegerField(
        required=False, min_value=1, max_value=16 * 1024 * 1024
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("argv" in attrs) == ("command" in attrs):
            raise serializers.ValidationError(
                {"argv": ["Give either argv (a list of strings) or command (a shell string)."]}
            )
        if "argv" in attrs and not attrs["argv"][0]:
            raise serializers.ValidationError({"argv": ["The program may not be blank."]})
        if "command" in attrs and not attrs["command"].strip():
            raise serializers.ValidationError({"command": ["The command may not be blank."]})
        return attrs


async def file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    """A file's bytes from where it is, a chunk at a time, read off the event loop."""
    while chunk := await asyncio.to_thread(file.read, _CHUNK):
        yield chunk


def _body_size(request: HttpRequest) -> int:
    """The size of a request's body, read none of it: its spooled file's under ASGI (whether or
    not a length was sent), else its Content-Length (WSGI reads no more than that)."""
    stream = request._stream  # type: ignore[attr-defined]
    try:
        stream.seek(0, 2)
        size = int(stream.tell())
        stream.seek(0)
        return size
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        pass
    raw = request.META.get("CONTENT_LENGTH") or ""
    if not raw.isdigit():
        raise BadRequest("send the file's length (Content-Length)")
    return int(raw)


async def _caller(request: HttpRequest, agent_id: uuid.UUID, scope: str) -> tuple[User, Any]:
    user = await request_user(request, scope=scope)
    agent = await sync_to_async(workspace_agent)(user=user, agent_id=agent_id)
    return user, agent


def _uploaded(request: HttpRequest) -> list[UploadedFile]:
    """The files of a multipart body (parts named ``file``); parsing spools large ones to disk.
    Django parses a POST's body itself, not a PUT's."""
    try:
        if request.method == "POST":
            found = list(request.FILES.getlist("file"))
        else:
            found = list(request.parse_file_upload(request.META, request)[1].getlist("file"))
    except (MultiPartParserError, TooManyFilesSent) as exc:
        raise BadRequest(f"the multipart body cannot be read: {exc}") from None
    for file in found:
        if not (file.name or "").strip():
            raise BadRequest("each file needs a name", details={"file": ["A name is required."]})
    return found


def _download(opened: Any) -> StreamingHttpResponse:
    name = opened.path.rsplit("/", 1)[-1]
    response = StreamingHttpResponse(opened.chunks(), content_type="application/octet-stream")
    response["Content-Length"] = str(opened.size)
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    # Whatever the file holds, it is never a page of the console's origin.
    response["Content-Security-Policy"] = "sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@csrf_exempt  # checked in request_user for browser sessions; API keys and JWTs need none
async def agent_files(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """``GET``: list a directory (``?path=``); ``POST``: upload files into it (multipart)."""
    try:
        path = request.GET.get("path", "")
        if request.method == "GET":
            _, agent = await _caller(request, agent_id, "read")
            return JsonResponse(await workspace_list(agent=agent, path=path))
        if request.method != "POST":
            raise MethodNotAllowed(["GET", "POST"])
        user, agent = await _caller(request, agent_id, "write")
        if not request.content_type.startswith(_MULTIPART):
            raise UnsupportedMediaType(
                "upload files as multipart/form-data, each part named file "
                "(or PUT one file's bytes to /files/<path>)",
                details={"content_type": request.content_type[:100]},
            )
        files = await sync_to_async(_uploaded)(request)
        if not files:
            raise BadRequest("no file was sent: name each part file", details={"file": []})
        written = []
        for file in files:
            name = (file.name or "").rsplit("/", 1)[-1]  # Django keeps the last part alone
            written.append(
                await workspace_upload(
                    user=user,
                    agent=agent,
                    path=f"{path}/{name}" if path else name,
                    size=file.size or 0,
                    body=file_chunks(file),
                )
            )
        return JsonResponse({"agent_id": str(agent.pk), "files": written}, status=201)
    except ConsoleError as exc:
        return error_response(exc)


@csrf_exempt
async def agent_file(request: HttpRequest, agent_id: uuid.UUID, path: str) -> HttpResponse:
    """``GET``: download; ``PUT``: upload; ``DELETE``: delete (``?recursive=true``)."""
    try:
        if request.method == "GET":
            _, agent = await _caller(request, agent_id, "read")
            return _download(await workspace_file_open(agent=agent, path=path))
        if request.method not in ("PUT", "DELETE"):
            raise MethodNotAllowed(["GET", "PUT", "DELETE"])
        user, agent = await _caller(request, agent_id, "write")
        if request.method == "DELETE":
            recursive = request.GET.get("recursive", "").lower() in ("1", "true", "yes")
            deleted = await workspace_delete(user=user, agent=agent, path=path, recursive=recursive)
            return JsonResponse(deleted)
        if request.content_type.startswith(_MULTIPART):
            files = await sync_to_async(_uploaded)(request)
            if len(files) != 1:
                raise BadRequest("send exactly one part named file", details={"file": []})
            body: IO[bytes] = files[0]
            size = files[0].size or 0
        else:
            body = request  # type: ignore[assignment]  # its spooled body, read as a file
            size = _body_size(request)
        written = await workspace_upload(
            user=user, agent=agent, path=path, size=size, body=file_chunks(body)
        )
        return JsonResponse(written, status=200 if written.get("replaced") else 201)
    except ConsoleError as exc:
        return error_response(exc)


@csrf_exempt
async def agent_exec(request: HttpRequest, agent_id: uuid.UUID) -> HttpResponse:
    """``POST``: run a command in the agent's sandbox; its exit code and output."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed(["POST"])
        user, agent = await _caller(request, agent_id, "write")
        data = validated(ExecRequestSerializer, json_object_body(request))
        result = await workspace_exec(
            user=user,
            agent=agent,
            argv=data.get("argv"),
            command=data.get("command"),
            cwd=data["cwd"],
            timeout=data.get("timeout_seconds"),
            output_limit=data.get("output_limit_bytes"),
        )
        return JsonResponse(result)
    except ConsoleError as exc:
        return error_response(exc)
