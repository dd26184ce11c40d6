"""``/api/v1/`` for agents, sessions, messages and one-shot tasks.

Everyone sees and acts on their own; operators see everyone's. Chatting is always as yourself:
a session is its user's. Lists are cursor-paginated, newest first, with filters.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from agents import selectors, services
from agents.models import Agent, Session
from agents.serializers import (
    AgentFilterSerializer,
    AgentSerializer,
    ExecuteRequestSerializer,
    LogsSerializer,
    SendMessageSerializer,
    SessionCreateSerializer,
    SessionDetailSerializer,
    SessionFilterSerializer,
    SessionSerializer,
    SessionTurnsSerializer,
    SpawnRequestSerializer,
    agent_row_data,
    validated,
)
from agents.services.live import (
    FollowedTurn,
    live_turn_result,
    live_turn_send,
    live_turn_stop,
    task_execute,
)
from agents.views import (
    IDEMPOTENCY_KEY,
    json_object_body,
    named_user,
    spawn_response,
    turn_stream_response,
)
from console.api.permissions import HasScope, is_operator
from console.authentication import request_user
from console.idempotency import idempotent, idempotent_followed, idempotent_json
from plumbing.database import database_sync_to_async
from plumbing.errors import (
    BadRequest,
    ConsoleError,
    MethodNotAllowed,
    error_response,
)
from plumbing.pagination import ApiCursorPagination

__all__ = [
    "AgentViewSet",
    "SessionViewSet",
    "execute",
    "session_cancel",
    "session_messages",
]

_SIGNED_IN = [IsAuthenticated, HasScope]


class _NewestFirst(ApiCursorPagination):
    ordering = "-created_at"


def _filters(serializer_class: type, request: Request) -> dict[str, Any]:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


# --- Agents --------------------------------------------------------------------------------------


@extend_schema(parameters=[AgentFilterSerializer])
class AgentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Agents: spawn, list (``?status=``, ``?model=``, ``?q=`` in the name, and for operators
    ``?user_id=``), get, stop, start, pause, resume, restart, delete, and the runtime's last
    log lines."""

    serializer_class = AgentSerializer
    permission_classes = _SIGNED_IN
    pagination_class = _NewestFirst
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Agent.objects.none()
        viewer, operator = self.request.user, is_operator(self.request)
        if self.action == "turns":  # tool results hold what the user's agent read: theirs alone
            operator = False
        if self.action != "list":
            return selectors.agent_list(viewer=viewer, operator=operator)
        found = _filters(AgentFilterSerializer, self.request)
        username = found.pop("user_id", None)
        owner = named_user(viewer, username, operator=operator) if username else None
        return selectors.agent_list(viewer=viewer, operator=operator, owner=owner, **found)

    def list(self, request: Request) -> Response:
        rows = selectors.agent_rows(self.get_queryset())
        page = self.paginate_queryset(rows)
        return self.get_paginated_response([agent_row_data(row) for row in page])

    @extend_schema(
        request=SpawnRequestSerializer,
        responses={201: AgentSerializer},
        parameters=[IDEMPOTENCY_KEY],
    )
    @idempotent
    def create(self, request: Request) -> Response:
        return spawn_response(request)

    @extend_schema(responses=AgentSerializer)
    def destroy(self, request: Request, pk: str) -> Response:
        agent = services.agent_destroy(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        agent = services.agent_stop(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str) -> Response:
        agent = services.agent_start(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        agent = services.agent_pause(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        agent = services.agent_resume(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str) -> Response:
        agent = services.agent_restart(agent=self.get_object(), actor=request.user)
        return Response(AgentSerializer(agent).data)

    @extend_schema(
        parameters=[OpenApiParameter("lines", int, description="How many (1-1000; 200).")],
        responses=LogsSerializer,
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        agent = self.get_object()
        lines = request.query_params.get("lines", "200")
        if not lines.isdigit() or not 1 <= int(lines) <= 1000:
            raise BadRequest("lines must be 1 to 1000", details={"lines": [lines]})
        text = services.agent_log_tail(agent=agent, lines=int(lines))
        return Response({"agent_id": str(agent.pk), "status": agent.status, "log": text})


# --- Sessions ------------------------------------------------------------------------------------


@extend_schema(parameters=[SessionFilterSerializer])
class SessionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Sessions: create one with an agent of yours, list (``?agent_id=``, ``?open=``, ``?q=`` in
    the title), get one with its messages, close it. Send turns to
    ``/api/v1/sessions/{id}/messages``."""

    serializer_class = SessionSerializer
    permission_classes = _SIGNED_IN
    pagination_class = _NewestFirst
    lookup_value_regex = r"[0-9a-fA-F-]{36}"

    def get_serializer_class(self):
        return SessionDetailSerializer if self.action == "retrieve" else SessionSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Session.objects.none()
        viewer, operator = self.request.user, is_operator(self.request)
        if self.action == "turns":  # tool results hold what the user's agent read: theirs alone
            operator = False
        if self.action != "list":
            return selectors.session_list(
                viewer=viewer, operator=operator, with_messages=self.action == "retrieve"
            )
        found = _filters(SessionFilterSerializer, self.request)
        return selectors.session_list(
            viewer=viewer,
            operator=operator,
            agent_id=found.get("agent_id"),
            is_open=found["open"],
            q=found.get("q"),
        )

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionSerializer})
    def create(self, request: Request) -> Response:
        params = SessionCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        session = services.session_create(user=request.user, **params.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=SessionSerializer)
    @action(detail=True, methods=["post"])
    def close(self, request: Request, pk: str) -> Response:
        session = services.session_close(user=request.user, session=self.get_object())
        return Response(SessionSerializer(session).data)

    @extend_schema(responses=SessionTurnsSerializer)
    @action(detail=True, methods=["get"])
    def turns(self, request: Request, pk: str) -> Response:
        """The session's turns as Claude saw them, tool calls and results included; its
        user's only."""
        session = self.get_object()
        data = {"session_id": session.pk, "turns": services.session_turns(session=session)}
        return Response(SessionTurnsSerializer(data).data)


# --- Messages (async: a turn may stream for minutes) ----------------------------------------------


@csrf_exempt  # checked in request_user for browser sessions; API keys and JWTs need none
async def session_messages(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """``POST /api/v1/sessions/{id}/messages``: send a turn; the reply as JSON, or as SSE with
    ``"stream": true`` (``delta`` events, then ``done``, ``error`` or ``cancelled``)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed(["POST"])
        user = await request_user(request, scope="write")
        data = validated(SendMessageSerializer, json_object_body(request))
        session = await database_sync_to_async(services.session_for_turn)(
            user=user, session_id=session_id
        )
        ask = functools.partial(
            live_turn_send,
            user=user,
            session_id=str(session.pk),
            content=data["content"],
            max_tokens=data["max_tokens"],
        )
        if data["stream"]:

            async def start() -> dict[str, Any]:
                return dataclasses.asdict(await ask())

            async def follow(reference: dict[str, Any]) -> HttpResponse:
                return await turn_stream_response(FollowedTurn(**reference))

            return await idempotent_followed(request, user.pk, start, follow)

        async def reply() -> dict[str, Any]:
            return (await live_turn_result(await ask())).as_hypercore()

        return await idempotent_json(request, user.pk, reply)
    except ConsoleError as exc:
        return error_response(exc)


@csrf_exempt
async def session_cancel(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """``POST /api/v1/sessions/{id}/cancel``: stop the turn in flight (409 when none is)."""
    try:
        if request.method != "POST":
            raise MethodNotAllowed(["POST"])
        user = await request_user(request, scope="write")
        await live_turn_stop(user=user, session_id=str(session_id))
    except ConsoleError as exc:
        return error_response(exc)
    return JsonResponse({"session_id": str(session_id), "cancelled": True}, status=202)


# --- One-shot tasks ------------------------------------------------------------------------------


def _task_answer(agent: Agent, result: services.ChatResult, began: float) -> dict[str, Any]:
    return {
        "result": result.content,
        "metadata": {
            "agent_id": str(agent.pk),
            "session_id": result.session_id,
            "model": agent.model,
            "tokens_used": result.input_tokens + result.output_tokens,
            "cost_usd": str(result.cost_usd),
            "timestamp": timezone.now().isoformat(),
        },
        "processing_time_ms": round((time.perf_counter() - began) * 1000, 2),
    }


@csrf_exempt
async def execute(request: HttpRequest) -> HttpResponse:
    """``POST /api/v1/execute``: a one-shot task (``task_description``, optional ``context``
    and ``agent_id``) run in a session of its own, closed after."""
    began = time.perf_counter()
    try:
        if request.method != "POST":
            raise MethodNotAllowed(["POST"])
        user = await request_user(request, scope="write")
        data = validated(ExecuteRequestSerializer, json_object_body(request))

        async def run() -> dict[str, Any]:
            agent, result = await task_execute(
                user=user,
                agent_id=data.get("agent_id"),
                task=data["task_description"],
                context=data.get("context"),
                max_tokens=data["max_tokens"],
            )
            return _task_answer(agent, result, began)

        return await idempotent_json(request, user.pk, run)
    except ConsoleError as exc:
        return error_response(exc)
